//! Health of backends, in three layers:
//! - [`spec`]: what a Service asks for (its `xlb.dev/health-check*` annotations) and the
//!   agent's defaults; pure parsing, imported by the model;
//! - [`probe`]: the prober, which runs the checks from the node (tokio I/O) and reports
//!   transitions;
//! - [`view`]: the reconciler's state: probe results, passive ejections (outlier
//!   detection), fail open.

pub mod probe;
pub mod spec;
pub mod view;

pub use probe::{
    Checker, Command, HealthMetrics, MAX_CONCURRENT, Probe, ProbeFailure, ProbeLabel, Reporter,
    ResultLabel, Schedule, Transition, probe_of,
};
pub use spec::{
    ANNOTATION_PREFIX, AnnotationError, HealthAnnotations, HealthCheck, HealthDefaults, Method,
    MethodKind, SpecError, parse_check_duration, parse_duration, parse_status,
};
pub use view::{Filtered, HealthView, OutlierConfig};
