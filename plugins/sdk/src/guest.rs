//! Glue between the generated WIT bindings and [`crate::Stage`]: holds the
//! stage instance, converts batches and outcomes by moving their columns.
//! Only compiled for WebAssembly; used through [`crate::export_stage!`].

#![allow(missing_docs)]

use std::cell::RefCell;

use crate::{BatchStage, Config, Level, NativeStage, StateHooks, Stateful, StatefulStage, batch};

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
    static HOOKS: RefCell<Option<Box<dyn StateHooks>>> = RefCell::new(None);
    /// The route names the stage declared in `init`.
    static ROUTES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// `init` export: builds the stage from its configuration.
pub fn init<S: BatchStage>(config: Vec<wit::ConfigEntry>) -> Result<(), String> {
    let config = Config::new(config.into_iter().map(|e| (e.key, e.value)));
    let stage = S::init(&config)?;
    ROUTES.with(|r| *r.borrow_mut() = config.routes());
    STAGE.with(|s| *s.borrow_mut() = Some(Box::new(stage)));
    Ok(())
}

/// `routes` export: the names the stage declared with
/// [`Config::route`] in `init`.
pub fn routes() -> Vec<String> {
    ROUTES.with(|r| r.borrow().clone())
}

/// `init` export of a stateful stage. The stage lives in `HOOKS`;
/// `STAGE` holds a forwarder so `process` works the same for both kinds.
pub fn init_stateful<S: StatefulStage>(config: Vec<wit::ConfigEntry>) -> Result<(), String> {
    let config = Config::new(config.into_iter().map(|e| (e.key, e.value)));
    let stage = S::init(&config)?;
    ROUTES.with(|r| *r.borrow_mut() = config.routes());
    HOOKS.with(|h| *h.borrow_mut() = Some(Box::new(Stateful(stage))));
    STAGE.with(|s| *s.borrow_mut() = Some(Box::new(Forward)));
    Ok(())
}

/// Forwards `process` to the stateful stage in `HOOKS`.
struct Forward;

impl NativeStage for Forward {
    fn process_batch(&mut self, batch: &batch::Batch) -> batch::Outcomes {
        with_hooks(|h| h.process_batch(batch))
    }
}

fn with_hooks<R>(f: impl FnOnce(&mut dyn StateHooks) -> R) -> R {
    HOOKS.with(|h| {
        let mut h = h.borrow_mut();
        f(h.as_mut()
            .expect("called before a successful init")
            .as_mut())
    })
}

/// `on-timer` export.
pub fn on_timer(context: wit::BatchContext) -> Vec<wit::SideRecord> {
    let context = batch::Context {
        now_ms: context.now_ms,
        topic: context.topic,
        partition: context.partition,
    };
    with_hooks(|h| h.on_timer(&context))
        .into_iter()
        .map(|r| wit::SideRecord {
            output: r.output,
            key: r.key,
            value: r.value,
        })
        .collect()
}

/// `snapshot` export.
pub fn snapshot() -> Vec<u8> {
    with_hooks(|h| h.snapshot())
}

/// `restore` export.
pub fn restore(state: Vec<u8>) -> Result<(), String> {
    with_hooks(|h| h.restore(&state))
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
