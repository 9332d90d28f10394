//! The spec's `services:` section: each entry is a `weir_serve::ServiceSpec`, checked and
//! registered (not started) in the process's service registry, where `infer` steps with
//! `service: NAME` find it. A service starts when the first step calling it opens. A service
//! declared `lifecycle: shared` is a `weir_serve::RemoteService`: its instances run in a service
//! host process found in (or started into) the registry directory.

use crate::spec::from_value;
use serde_norway::{Mapping, Value};
use std::sync::Arc;
use weir_infer::ModelService;
use weir_serve::{Lifecycle, RemoteService, Service, ServiceSpec};
use weir_types::{Error, Result};

/// Checks every service declaration and registers it (an equal declaration already registered,
/// from an earlier job in this process, is reused). Errors name the entry and the key.
pub fn declare(services: &[Mapping], origin: &str) -> Result<Vec<Arc<dyn ModelService>>> {
    let mut names = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(services.len());
    for (i, m) in services.iter().enumerate() {
        let at = format!("{origin}: services[{i}]");
        let spec: ServiceSpec = from_value(Value::Mapping(m.clone()), &at)?;
        if !names.insert(spec.name.clone()) {
            return Err(Error::config(format!(
                "{at}: service name '{}' is declared twice",
                spec.name
            )));
        }
        spec.validate()
            .map_err(|e| Error::config(format!("{at}: {}", e.message())))?;
        let service: Arc<dyn ModelService> = if spec.lifecycle == Lifecycle::Shared {
            let launch = serde_norway::to_string(&Value::Mapping(m.clone())).map_err(|e| {
                Error::internal(format!("{at}: cannot encode the declaration")).with_source(e)
            })?;
            Arc::new(RemoteService::new(
                spec,
                launch,
                weir_serve::host::registry_dir(),
            )?)
        } else {
            Arc::new(Service::new(spec)?)
        };
        out.push(weir_infer::service::register_service(service)?);
    }
    Ok(out)
}
