//! The raw bpf(2) calls aya 0.14 does not offer.
//!
//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` through the raw syscall: aya 0.14
//! has no batch API. One syscall for a whole table, and, for the map of maps, one RCU
//! grace period for a whole set of table swaps (the kernel waits once per syscall).
//! Single-element lookups of the map of maps go through the raw syscall too: aya's lookup
//! there opens the inner map by id (CAP_SYS_ADMIN); the id alone is what is wanted.

use std::os::fd::BorrowedFd;

pub mod batch {
    use std::{io, os::fd::AsRawFd as _};

    use super::BorrowedFd;

    /// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    fn call(cmd: libc::c_long, attr: &mut BatchAttr, want: usize) -> io::Result<()> {
        // SAFETY: the bpf syscall with a valid attribute block; `keys`/`values` point to
        // `count` elements of the map's key and value sizes (callers' contract).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if attr.count as usize != want {
            return Err(io::Error::other(format!(
                "batch stopped after {} of {want}",
                attr.count
            )));
        }
        Ok(())
    }

    /// Sets `keys[i]` to `values[i]`. `K` and `V` must be the map's key and value types.
    pub fn update<K: aya::Pod, V: aya::Pod>(
        map: BorrowedFd<'_>,
        keys: &[K],
        values: &[V],
    ) -> io::Result<()> {
        assert_eq!(keys.len(), values.len());
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        call(BPF_MAP_UPDATE_BATCH, &mut attr, keys.len())
    }

    /// Every (key, value) of a map, `chunk` at a time (arrays and hashes; not per-CPU).
    pub fn lookup_all<K: aya::Pod + bytemuck::Zeroable, V: aya::Pod + bytemuck::Zeroable>(
        map: BorrowedFd<'_>,
        chunk: usize,
    ) -> io::Result<Vec<(K, V)>> {
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
        let mut out = Vec::new();
        let mut keys: Vec<K> = vec![bytemuck::Zeroable::zeroed(); chunk];
        let mut values: Vec<V> = vec![bytemuck::Zeroable::zeroed(); chunk];
        // The batch position token (a u32 for arrays and hashes); 8 bytes leave room.
        let mut token_in = 0u64;
        let mut token_out = 0u64;
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &token_in as *const u64 as u64
                },
                out_batch: &mut token_out as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: map.as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: as in `call`; `keys`/`values` hold `chunk` elements of the map's
            // key and value sizes (callers' contract), the tokens 8 bytes each.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>() as u32,
                )
            };
            let n = attr.count as usize;
            out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOENT) {
                    return Ok(out);
                }
                return Err(e);
            }
            token_in = token_out;
            first = false;
        }
    }

    /// Deletes `keys` (all must exist).
    pub fn delete<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        call(BPF_MAP_DELETE_BATCH, &mut attr, keys.len())
    }
}

/// `BPF_MAP_LOOKUP_ELEM` through the raw syscall, for the map of maps: aya's lookup
/// there opens the inner map by id (CAP_SYS_ADMIN); the id alone is what is wanted.
pub mod single {
    use std::{io, os::fd::AsRawFd as _};

    use super::BorrowedFd;

    /// The `map_elem` member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    /// The value at `key`, `None` if absent. `K` and `V` must be the map's key and value
    /// types as userspace sees them.
    pub fn lookup<K: aya::Pod, V: aya::Pod + bytemuck::Zeroable>(
        map: BorrowedFd<'_>,
        key: &K,
    ) -> io::Result<Option<V>> {
        const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
        let mut value: V = bytemuck::Zeroable::zeroed();
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: &mut value as *mut V as u64,
            flags: 0,
        };
        // SAFETY: the bpf syscall with a valid attribute block; `key` and `value` point to
        // the map's key and value sizes (callers' contract).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &mut attr as *mut ElemAttr,
                size_of::<ElemAttr>() as u32,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(value))
    }

    /// Deletes `key`.
    pub fn delete<K: aya::Pod>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
        const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: as in `lookup`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_ELEM,
                &mut attr as *mut ElemAttr,
                size_of::<ElemAttr>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Bpf links: replacing a link's program (`BPF_LINK_UPDATE`, atomic: no packet or
/// socket sees no program) and reading what a link is attached to
/// (`BPF_OBJ_GET_INFO_BY_FD`). aya 0.14 offers the update for XDP links only.
pub mod link {
    use std::{io, os::fd::AsRawFd as _};

    use super::BorrowedFd;

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_UPDATE: libc::c_long = 29;

    /// `link_update` of `union bpf_attr`.
    #[repr(C)]
    struct UpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }

    /// `info` of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    /// The head of `struct bpf_link_info` and its per-type union (which starts on an
    /// 8-byte boundary: it holds 64-bit fields).
    #[repr(C)]
    #[derive(Default)]
    struct Info {
        type_: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        /// cgroup: `cgroup_id` (u64); xdp and tcx: `ifindex` (u32) first.
        target: u64,
        attach_type: u32,
        _rest: [u32; 13],
    }

    fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<()> {
        // SAFETY: the bpf syscall with an attribute block of `size` bytes the callers own.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as u32) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// `obj_pin`/`obj_get` of `union bpf_attr`.
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }

    /// Opens a pinned object.
    pub fn open(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut attr = ObjAttr {
            pathname: c.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
            path_fd: 0,
            _pad: 0,
        };
        // SAFETY: the bpf syscall with a valid attribute block; `c` outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                &mut attr as *mut ObjAttr,
                size_of::<ObjAttr>() as u32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new file descriptor the kernel just returned, owned by nobody else.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Points `link` at `prog`.
    pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
        let mut attr = UpdateAttr {
            link_fd: link.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        bpf(
            BPF_LINK_UPDATE,
            (&mut attr as *mut UpdateAttr).cast(),
            size_of::<UpdateAttr>(),
        )
    }

    /// What a link is attached to: the interface index (XDP, tcx; 0 once the interface is
    /// gone) or the cgroup id.
    pub fn target(link: BorrowedFd<'_>) -> io::Result<u64> {
        let mut info = Info::default();
        let mut attr = InfoAttr {
            bpf_fd: link.as_raw_fd() as u32,
            info_len: size_of::<Info>() as u32,
            info: &mut info as *mut Info as u64,
        };
        bpf(
            BPF_OBJ_GET_INFO_BY_FD,
            (&mut attr as *mut InfoAttr).cast(),
            size_of::<InfoAttr>(),
        )?;
        const BPF_LINK_TYPE_CGROUP: u32 = 3;
        Ok(if info.type_ == BPF_LINK_TYPE_CGROUP {
            info.target
        } else {
            info.target & 0xffff_ffff
        })
    }
}
