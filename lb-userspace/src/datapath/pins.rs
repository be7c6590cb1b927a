//! The pin directory of an agent instance, on a bpffs, and whether the pins an earlier
//! agent left there can be adopted.

use std::{os::unix::ffi::OsStrExt as _, path::Path};

use aya::maps::{Array, Map, MapData};
use lb_common::maps::{self as names, BackendValue, FrontendKey, FrontendValue, MemberKey};

use super::{DatapathError, Incompatible};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

use super::LINKS_DIR;

/// Key and value sizes of every map, as this agent lays them out.
fn expected_layout() -> [(&'static str, usize, usize); 13] {
    use lb_common::{
        maps::{AffinityKey, AffinityValue, CtKey, CtValue, Meta, SockRevKey, SockRevValue},
        stats::{BackendStats, GlobalStats, ServiceStats},
    };
    [
        (names::META, 4, size_of::<Meta>()),
        (
            names::FRONTENDS,
            size_of::<FrontendKey>(),
            size_of::<FrontendValue>(),
        ),
        (names::MAGLEV, 4, 4),
        (names::BACKENDS, 4, size_of::<BackendValue>()),
        (names::CONNTRACK, size_of::<CtKey>(), size_of::<CtValue>()),
        (names::STATS, 4, size_of::<GlobalStats>()),
        (names::SERVICE_STATS, 4, size_of::<ServiceStats>()),
        (names::BACKEND_STATS, 4, size_of::<BackendStats>()),
        (
            names::AFFINITY,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
        ),
        (names::AFFINITY_MEMBERS, size_of::<MemberKey>(), 4),
        // A ring buffer has neither keys nor values.
        (names::SIGNALS, 0, 0),
        (
            names::SOCK_REVNAT,
            size_of::<SockRevKey>(),
            size_of::<SockRevValue>(),
        ),
        (names::TX_PORTS, 4, 4),
    ]
}

/// Whether `dir` holds pins of an earlier agent, and whether this agent can adopt them:
/// all of them present, of this layout version, with the expected key and value sizes.
/// Returns whether there is anything to adopt.
pub fn check_pins(
    dir: &Path,
    conntrack_entries: u32,
    backends: u32,
) -> Result<bool, DatapathError> {
    let present: Vec<&str> = names::ALL_MAPS
        .iter()
        .copied()
        .filter(|n| dir.join(n).exists())
        .collect();
    if present.is_empty() {
        return Ok(false);
    }
    let incompatible = |reason: Incompatible| DatapathError::IncompatiblePins {
        dir: dir.into(),
        reason,
    };
    let unreadable = |name: &'static str| {
        move |e: aya::maps::MapError| {
            incompatible(Incompatible::Unreadable {
                name,
                source: Box::new(e),
            })
        }
    };
    if present.len() != names::ALL_MAPS.len() {
        let missing: Vec<&'static str> = names::ALL_MAPS
            .iter()
            .copied()
            .filter(|n| !present.contains(n))
            .collect();
        return Err(incompatible(Incompatible::Missing(missing)));
    }
    let meta: Array<MapData, lb_common::maps::Meta> = Array::try_from(Map::Array(
        MapData::from_pin(dir.join(names::META)).map_err(unreadable(names::META))?,
    ))
    .map_err(unreadable(names::META))?;
    let version = meta
        .get(&0, 0)
        .map_err(unreadable(names::META))?
        .layout_version;
    if version != names::LAYOUT_VERSION {
        return Err(incompatible(Incompatible::Version {
            found: version,
            want: names::LAYOUT_VERSION,
        }));
    }
    for (name, key, value) in expected_layout() {
        let info = aya::maps::MapInfo::from_pin(dir.join(name)).map_err(unreadable(name))?;
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            return Err(incompatible(Incompatible::Sizes {
                name,
                key: info.key_size(),
                value: info.value_size(),
                want_key: key,
                want_value: value,
            }));
        }
        if name == names::CONNTRACK && info.max_entries() != conntrack_entries {
            tracing::warn!(
                pinned = info.max_entries(),
                requested = conntrack_entries,
                "the pinned connection table keeps its size; --conntrack-entries applies once the pins are removed"
            );
        }
        if name == names::BACKENDS && info.max_entries() != backends {
            tracing::warn!(
                pinned = info.max_entries(),
                requested = backends,
                "the pinned backend table keeps its size; --max-backends applies once the pins are removed"
            );
        }
    }
    Ok(true)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The nearest existing directory at or above `dir`.
fn existing_ancestor(dir: &Path) -> &Path {
    dir.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
}

/// Creates the pin directory on a bpffs (at any depth below the mount).
pub fn prepare_pin_dir(dir: &Path) -> Result<(), DatapathError> {
    let existing = existing_ancestor(dir);
    if !is_bpffs(existing) {
        return Err(DatapathError::NotBpffs {
            path: existing.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
        path: dir.into(),
        source,
    })
}

/// Whether `dir` holds an instance's pins (any of its maps): for the commands that read
/// them, a clear error instead of a failed map open.
pub fn require_instance(dir: &Path) -> Result<(), DatapathError> {
    if names::ALL_MAPS.iter().any(|n| dir.join(n).exists()) {
        return Ok(());
    }
    let existing = existing_ancestor(dir);
    if !is_bpffs(existing) {
        return Err(DatapathError::NotBpffs {
            path: existing.to_path_buf(),
        });
    }
    Err(DatapathError::NoInstance { dir: dir.into() })
}

/// Mounts a bpf filesystem at `path` (created if missing) unless one is there. Returns
/// whether it mounted one.
pub fn mount_bpffs(path: &Path) -> Result<bool, DatapathError> {
    let err = |source| DatapathError::PinDir {
        path: path.into(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    if is_bpffs(path) {
        return Ok(false);
    }
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::other("a NUL byte in the path")))?;
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(true)
}

/// Removes every pin of this instance (and the directory when it is left empty): the
/// program is detached from every interface it was left attached to, and the maps, the
/// connection table included, are freed. Returns how many pins it removed.
pub fn remove_pins(dir: &Path) -> Result<usize, DatapathError> {
    let mut removed = 0;
    // Links first: removing a link's pin detaches the program from its interface.
    for sub in [LINKS_DIR, names::TABLES_DIR] {
        let sub = dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&sub) {
            for entry in entries.flatten() {
                std::fs::remove_file(entry.path()).map_err(|source| DatapathError::PinDir {
                    path: entry.path(),
                    source,
                })?;
                removed += 1;
            }
            let _ = std::fs::remove_dir(&sub);
        }
    }
    for name in names::ALL_MAPS {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DatapathError::PinDir {
                    path: dir.join(name),
                    source,
                });
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}
