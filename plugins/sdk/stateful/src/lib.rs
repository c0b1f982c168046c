//! Exports a [`stage_sdk::StatefulStage`] as a component of the
//! `pipeline:stage/stateful-stage@0.2.0` world (timers, snapshot and
//! restore on top of `transform`).
//!
//! It is a crate of its own because wit-bindgen's export macros for the
//! `transform` interface are crate-global names: `stage-sdk` exports the
//! `stage` world, this crate the `stateful-stage` world. Stateless stages
//! need only `stage-sdk`.
//!
//! ```ignore
//! use stage_sdk::{BatchStage, StatefulStage};
//! struct Counter { /* ... */ }
//! impl BatchStage for Counter { /* init, process_batch */ }
//! impl StatefulStage for Counter { /* on_timer, snapshot, restore */ }
//! stage_sdk_stateful::export_stateful_stage!(Counter);
//! ```

#[doc(hidden)]
pub use stage_sdk;

/// Bindings of world `stateful-stage`, sharing the types (and the `host`
/// import) of `stage-sdk`'s bindings, so its glue functions serve both
/// worlds.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "stateful-stage",
        pub_export_macro: true,
        export_macro_name: "__export_stateful_stage_bindings",
        default_bindings_module: "stage_sdk_stateful::bindings",
        with: {
            "pipeline:stage/types@0.2.0": stage_sdk::guest::bindings::pipeline::stage::types,
            "pipeline:stage/host@0.2.0": stage_sdk::guest::bindings::pipeline::stage::host,
        },
    });
}

/// Exports a [`stage_sdk::StatefulStage`] as a component of the `stateful-stage`
/// world. Use it once, in the stage crate's `lib.rs`. Expands to nothing
/// outside WebAssembly.
#[macro_export]
macro_rules! export_stateful_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            use $crate::bindings as b;
            use $crate::stage_sdk::guest::bindings::pipeline::stage::types as t;
            struct Component;
            impl b::exports::pipeline::stage::transform::Guest for Component {
                fn init(
                    config: ::std::vec::Vec<t::ConfigEntry>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::stage_sdk::guest::init_stateful::<$stage>(config)
                }
                fn routes() -> ::std::vec::Vec<::std::string::String> {
                    $crate::stage_sdk::guest::routes()
                }
                fn process(batch: t::Batch) -> t::Outcomes {
                    $crate::stage_sdk::guest::process(batch)
                }
            }
            impl b::exports::pipeline::stage::stateful::Guest for Component {
                fn on_timer(context: t::BatchContext) -> ::std::vec::Vec<t::SideRecord> {
                    $crate::stage_sdk::guest::on_timer(context)
                }
                fn snapshot() -> ::std::vec::Vec<u8> {
                    $crate::stage_sdk::guest::snapshot()
                }
                fn restore(
                    state: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::stage_sdk::guest::restore(state)
                }
            }
    b::__export_stateful_stage_bindings!(Component with_types_in b);
        };
    };
}
