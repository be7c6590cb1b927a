//! The check specification: what a Service's `xlb.dev/health-check*` annotations ask
//! for, the agent-wide defaults (flags), and how durations and status ranges are written.
//! Pure data and parsing: it imports nothing from the rest of the crate, so the model can
//! carry a Service's annotations without depending on the prober or the reconciler.

use std::{collections::BTreeMap, time::Duration};

/// Annotation prefix of the health-check settings of a Service.
pub const ANNOTATION_PREFIX: &str = "xlb.dev/health-check";

/// How to check a backend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// A TCP connect.
    Tcp,
    /// `GET path` over HTTP/1.1; healthy when the status is within `min..=max`.
    Http { path: String, min: u16, max: u16 },
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => write!(f, "tcp"),
            Self::Http { path, min, max } => write!(f, "http {path} {min}-{max}"),
        }
    }
}

/// A Service's health-check settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub method: Method,
    /// The port to check; `None`: each backend's target port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// What a Service's annotations say about health checks (see the README): `None` fields
/// take the agent's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthAnnotations {
    /// `Some(None)`: `none` (no check); `Some(Some(m))`: this method.
    pub method: Option<Option<MethodKind>>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub status: Option<(u16, u16)>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

/// A check method as annotations and flags name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    Tcp,
    Http,
}

/// The agent-wide defaults (flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthDefaults {
    /// `None`: no check unless a Service asks for one.
    pub method: Option<MethodKind>,
    pub path: String,
    pub status: (u16, u16),
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthDefaults {
    fn default() -> Self {
        Self {
            method: None,
            path: "/".into(),
            status: (200, 399),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

/// Why a health-check setting is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{text:?} is not a duration like 500ms, 1m30s or 2h")]
    NotADuration { text: String },
    #[error("{text:?}: unknown unit {unit:?} (ns, us, ms, s, m or h)")]
    UnknownUnit { text: String, unit: String },
    #[error("{text:?} is shorter than 10ms")]
    DurationRange { text: String },
    #[error("{text:?} is not a status or a status range like 200-399")]
    Status { text: String },
    #[error("{value:?} is not tcp, http or none")]
    Method { value: String },
    #[error("{value:?} is not a port")]
    Port { value: String },
    #[error("{value:?} is not an absolute path")]
    Path { value: String },
    #[error("{value:?} is not an integer 1..100")]
    Threshold { value: String },
    #[error("unknown health-check annotation")]
    Unknown,
}

/// An invalid `xlb.dev/health-check*` annotation: which one, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {problem}")]
pub struct AnnotationError {
    pub key: String,
    #[source]
    pub problem: SpecError,
}

/// Parses a duration as Kubernetes (Go's `time.ParseDuration`) writes them: a sequence
/// of decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as
/// `500ms`, `1m30s` or `1.5h`; a bare number is seconds. Any length (see
/// [`parse_check_duration`] for the bounds of a health check's).
pub fn parse_duration(text: &str) -> Result<Duration, SpecError> {
    let t = text.trim();
    let bad = || SpecError::NotADuration { text: text.into() };
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut rest = t;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_end);
        let n: f64 = number.parse().map_err(|_| bad())?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(SpecError::UnknownUnit {
                    text: text.into(),
                    unit: unit.into(),
                });
            }
        };
        total += n * seconds;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// [`parse_duration`], at least what a health check's interval or timeout may be (10 ms:
/// shorter is a probe storm, not a check).
pub fn parse_check_duration(text: &str) -> Result<Duration, SpecError> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(10) {
        return Err(SpecError::DurationRange { text: text.into() });
    }
    Ok(d)
}

/// Parses an HTTP status (`200`) or an inclusive range of them (`200-399`).
pub fn parse_status(text: &str) -> Result<(u16, u16), SpecError> {
    let bad = || SpecError::Status { text: text.into() };
    let (a, b) = text
        .trim()
        .split_once('-')
        .unwrap_or((text.trim(), text.trim()));
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

fn parse_threshold(value: &str) -> Result<u32, SpecError> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| SpecError::Threshold {
            value: value.into(),
        })
}

fn parse_method(value: &str) -> Result<Option<MethodKind>, SpecError> {
    match value.trim() {
        "tcp" => Ok(Some(MethodKind::Tcp)),
        "http" => Ok(Some(MethodKind::Http)),
        "none" => Ok(None),
        other => Err(SpecError::Method {
            value: other.into(),
        }),
    }
}

fn parse_port(value: &str) -> Result<u16, SpecError> {
    value
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| SpecError::Port {
            value: value.into(),
        })
}

fn parse_path(value: &str) -> Result<String, SpecError> {
    if !value.starts_with('/') || value.contains(char::is_whitespace) {
        return Err(SpecError::Path {
            value: value.into(),
        });
    }
    Ok(value.to_string())
}

impl HealthAnnotations {
    /// Reads the `xlb.dev/health-check*` annotations; an invalid one is an error naming it.
    pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Result<Self, AnnotationError> {
        let mut out = Self::default();
        let Some(all) = annotations else {
            return Ok(out);
        };
        for (key, value) in all.range(ANNOTATION_PREFIX.to_string()..) {
            let Some(rest) = key.strip_prefix(ANNOTATION_PREFIX) else {
                break;
            };
            out.set(rest, value).map_err(|problem| AnnotationError {
                key: key.clone(),
                problem,
            })?;
        }
        Ok(out)
    }

    /// Records one annotation, `rest` being its key after [`ANNOTATION_PREFIX`].
    fn set(&mut self, rest: &str, value: &str) -> Result<(), SpecError> {
        match rest {
            "" => self.method = Some(parse_method(value)?),
            "-port" => self.port = Some(parse_port(value)?),
            "-path" => self.path = Some(parse_path(value)?),
            "-status" => self.status = Some(parse_status(value)?),
            "-interval" => self.interval = Some(parse_check_duration(value)?),
            "-timeout" => self.timeout = Some(parse_check_duration(value)?),
            "-healthy-threshold" => self.healthy_threshold = Some(parse_threshold(value)?),
            "-unhealthy-threshold" => self.unhealthy_threshold = Some(parse_threshold(value)?),
            _ => return Err(SpecError::Unknown),
        }
        Ok(())
    }

    /// The check of a Service port of protocol `udp` or not, with the defaults applied.
    /// A UDP port is checked only when a check port is given (TCP or HTTP on that port):
    /// its own port does not accept connections.
    pub fn resolve(&self, defaults: &HealthDefaults, udp: bool) -> Option<HealthCheck> {
        let kind = match self.method {
            Some(m) => m?,
            None => defaults.method?,
        };
        if udp && self.port.is_none() {
            return None;
        }
        let (min, max) = self.status.unwrap_or(defaults.status);
        let method = match kind {
            MethodKind::Tcp => Method::Tcp,
            MethodKind::Http => Method::Http {
                path: self.path.clone().unwrap_or_else(|| defaults.path.clone()),
                min,
                max,
            },
        };
        let interval = self.interval.unwrap_or(defaults.interval);
        Some(HealthCheck {
            method,
            port: self.port,
            interval,
            timeout: self.timeout.unwrap_or(defaults.timeout).min(interval),
            healthy_threshold: self.healthy_threshold.unwrap_or(defaults.healthy_threshold),
            unhealthy_threshold: self
                .unhealthy_threshold
                .unwrap_or(defaults.unhealthy_threshold),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_override_defaults() {
        let a = HealthAnnotations::parse(Some(&ann(&[
            ("xlb.dev/health-check", "http"),
            ("xlb.dev/health-check-path", "/healthz"),
            ("xlb.dev/health-check-status", "200-204"),
            ("xlb.dev/health-check-interval", "500ms"),
            ("xlb.dev/health-check-unhealthy-threshold", "3"),
            ("other", "x"),
        ])))
        .unwrap();
        let c = a.resolve(&HealthDefaults::default(), false).unwrap();
        assert_eq!(
            c.method,
            Method::Http {
                path: "/healthz".into(),
                min: 200,
                max: 204
            }
        );
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(
            c.timeout,
            Duration::from_millis(500),
            "the timeout never exceeds the interval"
        );
        assert_eq!((c.healthy_threshold, c.unhealthy_threshold), (2, 3));
        // The default is no check; "none" turns a default off.
        assert_eq!(
            HealthAnnotations::default().resolve(&HealthDefaults::default(), false),
            None
        );
        let on = HealthDefaults {
            method: Some(MethodKind::Tcp),
            ..Default::default()
        };
        let off =
            HealthAnnotations::parse(Some(&ann(&[("xlb.dev/health-check", "none")]))).unwrap();
        assert_eq!(off.resolve(&on, false), None);
        assert!(HealthAnnotations::default().resolve(&on, false).is_some());
        // UDP ports only with a check port.
        assert_eq!(HealthAnnotations::default().resolve(&on, true), None);
        let port =
            HealthAnnotations::parse(Some(&ann(&[("xlb.dev/health-check-port", "8080")]))).unwrap();
        assert_eq!(port.resolve(&on, true).unwrap().port, Some(8080));
    }

    #[test]
    fn invalid_annotations_say_which_and_why() {
        let text = |v: &str| v.to_string();
        for (k, v, want) in [
            (
                "xlb.dev/health-check",
                "icmp",
                SpecError::Method {
                    value: text("icmp"),
                },
            ),
            (
                "xlb.dev/health-check-port",
                "70000",
                SpecError::Port {
                    value: text("70000"),
                },
            ),
            (
                "xlb.dev/health-check-interval",
                "fast",
                SpecError::NotADuration { text: text("fast") },
            ),
            (
                "xlb.dev/health-check-interval",
                "5ms",
                SpecError::DurationRange { text: text("5ms") },
            ),
            (
                "xlb.dev/health-check-status",
                "500-200",
                SpecError::Status {
                    text: text("500-200"),
                },
            ),
            (
                "xlb.dev/health-check-path",
                "healthz",
                SpecError::Path {
                    value: text("healthz"),
                },
            ),
            (
                "xlb.dev/health-check-healthy-threshold",
                "0",
                SpecError::Threshold { value: text("0") },
            ),
            ("xlb.dev/health-check-colour", "red", SpecError::Unknown),
        ] {
            let e = HealthAnnotations::parse(Some(&ann(&[(k, v)]))).unwrap_err();
            assert_eq!(
                e,
                AnnotationError {
                    key: k.into(),
                    problem: want
                },
                "{k}={v}"
            );
        }
    }

    #[test]
    fn durations_are_read_as_kubernetes_writes_them() {
        let ok = |t: &str, d: Duration| assert_eq!(parse_duration(t), Ok(d), "{t}");
        ok("500ms", Duration::from_millis(500));
        ok("1m30s", Duration::from_secs(90));
        ok("1.5h", Duration::from_secs(5400));
        ok("2h45m", Duration::from_secs(9900));
        ok("24h", Duration::from_secs(86_400));
        ok("90", Duration::from_secs(90));
        ok("250us", Duration::from_micros(250));
        for bad in ["", "fast", "1x", "m", "1.2.3s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_duration("3d"),
            Err(SpecError::UnknownUnit { .. })
        ));
    }
}
