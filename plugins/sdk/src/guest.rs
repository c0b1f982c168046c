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
    let batch = batch::Batch {
        context: batch::Context {
            now_ms: b.context.now_ms,
            topic: b.context.topic,
            partition: b.context.partition,
        },
        values: b.values,
        value_ends: b.value_ends,
        keys: b.keys,
        key_ends: b.key_ends,
        key_null: b.key_null,
        header_data: b.header_data,
        header_ends: b.header_ends,
        header_index: b.header_index,
        timestamps: b.timestamps,
        offsets: b.offsets,
    };
    if let Err(problem) = batch.check() {
        panic!("the host sent a malformed batch: {problem}");
    }
    let out = STAGE.with(|s| {
        let mut s = s.borrow_mut();
        let stage = s.as_mut().expect("process called before a successful init");
        stage.process_batch(&batch)
    });
    wit::Outcomes {
        verdicts: out
            .verdicts
            .into_iter()
            .map(|v| match v {
                batch::Verdict::Keep => wit::Verdict::Keep,
                batch::Verdict::Drop => wit::Verdict::Drop,
                batch::Verdict::Append => wit::Verdict::Append,
                batch::Verdict::Replace => wit::Verdict::Replace,
                batch::Verdict::Fail => wit::Verdict::Fail,
            })
            .collect(),
        data: out.data,
        data_ends: out.data_ends,
        replacements: out
            .replacements
            .into_iter()
            .map(|r| wit::NewRecord {
                input: r.input,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| wit::Header {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
            })
            .collect(),
        side: out
            .side
            .into_iter()
            .map(|s| wit::SideRecord {
                output: s.output,
                key: s.key,
                value: s.value,
            })
            .collect(),
    }
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
