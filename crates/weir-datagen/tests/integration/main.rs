//! weir-datagen's integration tests: the generators under the runtime, with event time.

mod event_time;
