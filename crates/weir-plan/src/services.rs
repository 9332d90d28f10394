//! The graph's services: each entry is a `weir_serve::ServiceSpec`. Planning checks them and
//! describes them to the steps as `weir_infer::DeclaredService`s (what a service's model takes and
//! gives, read from its file); nothing starts. The job-start function ([`start`]) makes the
//! services, which start their instances when the first step calling them opens. A service
//! declared `lifecycle: shared` is a `weir_serve::RemoteService`: its instances run in a service
//! host process found in (or started into) the registry directory.

use std::sync::Arc;
use weir_infer::{DeclaredService, ModelService};
use weir_runtime::kind::Resources;
use weir_serve::{Lifecycle, RemoteService, Service, ServiceSpec};
use weir_types::{Error, Result};

/// A checked service declaration.
#[derive(Debug, Clone)]
pub struct Declared {
    /// The declaration.
    pub spec: ServiceSpec,
    /// As the graph gives it (a shared service's host is started with it).
    pub value: serde_json::Value,
}

/// Checks every service declaration; errors name the entry and the key.
pub fn check(services: &[serde_json::Value], origin: &str) -> Result<Vec<Declared>> {
    let mut names = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(services.len());
    for (i, value) in services.iter().enumerate() {
        let at = format!("{origin}: services[{i}]");
        let spec: ServiceSpec = weir_runtime::kind::from_value(value.clone(), &at)?;
        if !names.insert(spec.name.clone()) {
            return Err(Error::config(format!(
                "{at}: service name '{}' is declared twice",
                spec.name
            )));
        }
        spec.validate()
            .map_err(|e| Error::config(format!("{at}: {}", e.message())))?;
        out.push(Declared {
            spec,
            value: value.clone(),
        });
    }
    Ok(out)
}

/// The plan-time resources: each service's declaration, by name.
pub fn declarations(declared: &[Declared]) -> Resources {
    let mut r = Resources::new();
    for d in declared {
        r.insert(
            d.spec.name.clone(),
            DeclaredService {
                name: d.spec.name.clone(),
                model: d.spec.model.clone(),
            },
        );
    }
    r
}

/// Job start: makes each declared service (starting no instance yet: they start when the first
/// step calling the service opens).
pub fn start(declared: &[Declared]) -> Result<Vec<Arc<dyn ModelService>>> {
    declared
        .iter()
        .map(|d| -> Result<Arc<dyn ModelService>> {
            if d.spec.lifecycle == Lifecycle::Shared {
                let launch = serde_norway::to_string(&d.value).map_err(|e| {
                    Error::internal(format!(
                        "service '{}': cannot encode the declaration",
                        d.spec.name
                    ))
                    .with_source(e)
                })?;
                Ok(Arc::new(RemoteService::new(
                    d.spec.clone(),
                    launch,
                    weir_serve::host::registry_dir(),
                )?))
            } else {
                Ok(Arc::new(Service::new(d.spec.clone())?))
            }
        })
        .collect()
}
