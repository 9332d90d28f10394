//! weir's inference services: a model deployed apart from the data plane, with instances of its
//! own, that `infer` steps call asynchronously (`service: NAME`).
//!
//! A [`Service`] (declared by a [`ServiceSpec`], one entry of the spec's `services:` section)
//! implements `weir_infer::ModelService`: it is a `weir_infer::pool::Pool` (the same instance
//! pool that runs an `infer` step's own instances) configured from the spec. Its instances are
//! threads running a `weir_infer::Backend`; an instance receives requests only once its model
//! has loaded and a warm-up batch has run. Requests wait in the service's queue and go to the ready instance with
//! the least outstanding work (at most `window` each); membership changes are pushed through a
//! `tokio::sync::watch` channel ([`Service::members`]). `scale` (or the autoscaler, within
//! `[min, max]`, from queue depth and utilisation) adds instances, or stops routing to some,
//! lets them finish what they hold, then stops them. A dead instance (panic, exit, hang) has its
//! requests re-dispatched and is replaced; a request that killed `max_deaths` instances fails
//! with the reason. Callers get per-attempt timeouts and retries with backoff.
//!
//! Out-of-process instances ([`flight`]) are the same threads running a `FlightBackend` that
//! talks Arrow Flight over loopback to a `weir serve-model` process (or any server speaking the
//! same wire format); the process dying or shutting down makes its instance die, with the same
//! re-dispatch and replacement.
//!
//! A service declared `lifecycle: shared` runs in a host process of its own ([`host`],
//! `weir serve-service`) that several jobs, in any number of processes, call through the
//! registry directory ([`RemoteService`]); the first job that needs it starts it.

#![warn(missing_docs)]

pub mod control;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
pub mod flight;
pub mod host;
mod not_offered;
pub mod remote;
pub mod service;
pub mod spec;

pub use remote::RemoteService;
pub use service::Service;
pub use spec::{AutoscaleSpec, InstancesSpec, Lifecycle, Placement, ResourcesSpec, ServiceSpec};
pub use weir_infer::pool::Membership;
