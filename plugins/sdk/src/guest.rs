//! Glue between the generated WIT bindings and [`crate::Stage`]: holds the
//! stage instance, converts batches and outcomes by moving their columns.
//! Only compiled for WebAssembly; used through [`crate::export_stage!`].

#![allow(missing_docs)]

use std::cell::RefCell;

use crate::{BatchStage, Config, Level, NativeStage, batch};

/// Bindings generated from `wit/stage.wit` (world `stage`).
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "stage",
        pub_export_macro: true,
        export_macro_name: "__export_stage_bindings",
        default_bindings_module: "stage_sdk::guest::bindings",
    });
}

use bindings::pipeline::stage::types as wit;

thread_local! {
    static STAGE: RefCell<Option<Box<dyn NativeStage>>> = RefCell::new(None);
}

/// `init` export: builds the stage from its configuration.
pub fn init<S: BatchStage>(config: Vec<wit::ConfigEntry>) -> Result<(), String> {
    let config = Config::new(config.into_iter().map(|e| (e.key, e.value)));
    let stage = S::init(&config)?;
    STAGE.with(|s| *s.borrow_mut() = Some(Box::new(stage)));
    Ok(())
}

/// `process` export: runs the stage over a batch.
pub fn process(b: wit::Batch) -> wit::Outcomes {
    let batch = crate::move_batch!(b => batch::Batch, batch::Context);
    if let Err(problem) = batch.check() {
        panic!("the host sent a malformed batch: {problem}");
    }
    let out = STAGE.with(|s| {
        let mut s = s.borrow_mut();
        let stage = s.as_mut().expect("process called before a successful init");
        stage.process_batch(&batch)
    });
    crate::move_outcomes!(out, batch::Verdict => wit::Outcomes, wit::Verdict, wit::NewRecord, wit::Header, wit::SideRecord)
}

/// Sends a log line to the host.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    bindings::pipeline::stage::host::log(level, message);
}
