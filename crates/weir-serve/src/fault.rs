//! Fault-injection stand-ins for tests and drills: [`FaultyBackend`] wraps a real backend and,
//! when told to through its [`Faults`], panics (an instance crash), hangs, fails, or answers with
//! the wrong shape. They are stand-ins for misbehaving models, not models; nothing else in weir
//! uses them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_infer::{Backend, BackendFactory, HostTensor, ModelInfo, Tensors};
use weir_types::{Error, Result};

/// What the next runs of every [`FaultyBackend`] sharing these faults do wrong. Each counter is
/// "the next N runs"; the first fault whose counter is above zero is taken.
#[derive(Debug, Default)]
pub struct Faults {
    /// Runs that panic (the instance dies).
    pub panic_next: AtomicUsize,
    /// Runs that sleep for `hang_for` before answering.
    pub hang_next: AtomicUsize,
    /// How long a hang lasts, in milliseconds.
    pub hang_ms: AtomicU64,
    /// Runs that return an error.
    pub error_next: AtomicUsize,
    /// Runs that return the first output with its batch dimension doubled.
    pub wrong_shape_next: AtomicUsize,
    /// A row whose first input's first element equals this value panics its instance every time
    /// (a poison input).
    pub poison: Mutex<Option<f32>>,
    /// Runs done (any outcome).
    pub runs: AtomicUsize,
    /// Rows of every run, in order (to see how requests were batched).
    pub batch_rows: Mutex<Vec<usize>>,
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Faults {
    /// New faults, all off.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Sets the hang duration.
    pub fn hang_for(&self, d: Duration) {
        self.hang_ms.store(
            d.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    fn poisoned(&self, inputs: &Tensors) -> bool {
        let Ok(guard) = self.poison.lock() else {
            return false;
        };
        let Some(value) = *guard else {
            return false;
        };
        let Some((_, t)) = inputs.first() else {
            return false;
        };
        let Some(a) = t.data.as_any().downcast_ref::<arrow::array::Float32Array>() else {
            return false;
        };
        let rows = t.shape.first().copied().unwrap_or(0).max(1);
        let per = a.len() / rows;
        (0..rows).any(|r| a.values().get(r * per) == Some(&value))
    }
}

/// A real backend with injected faults. See the module docs.
pub struct FaultyBackend {
    inner: Box<dyn Backend>,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    /// A factory wrapping every backend `inner` makes.
    pub fn factory(inner: BackendFactory, faults: Arc<Faults>) -> BackendFactory {
        Arc::new(move |i| {
            Ok(Box::new(FaultyBackend {
                inner: inner(i)?,
                faults: faults.clone(),
            }) as Box<dyn Backend>)
        })
    }
}

impl Backend for FaultyBackend {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    #[allow(clippy::panic)]
    fn run(&mut self, inputs: Tensors) -> Result<Tensors> {
        let f = &self.faults;
        f.runs.fetch_add(1, Ordering::SeqCst);
        if let (Ok(mut seen), Some((_, t))) = (f.batch_rows.lock(), inputs.first()) {
            seen.push(t.shape.first().copied().unwrap_or(0));
        }
        if f.poisoned(&inputs) {
            panic!("fault injection: poison row");
        }
        if take(&f.panic_next) {
            panic!("fault injection: instance crash");
        }
        if take(&f.hang_next) {
            std::thread::sleep(Duration::from_millis(f.hang_ms.load(Ordering::SeqCst)));
        }
        if take(&f.error_next) {
            return Err(Error::external("fault injection: the model failed"));
        }
        let mut out = self.inner.run(inputs)?;
        if take(&f.wrong_shape_next)
            && let Some((_, t)) = out.first_mut()
        {
            let doubled = arrow::compute::concat(&[t.data.as_ref(), t.data.as_ref()])?;
            let mut shape = t.shape.clone();
            if let Some(d) = shape.first_mut() {
                *d *= 2;
            }
            *t = HostTensor::try_new(shape, doubled)?;
        }
        Ok(out)
    }
}
