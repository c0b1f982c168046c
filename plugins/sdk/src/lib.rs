//! The guest SDK for `pipeline-host` transform stages.
//!
//! A stage is a type implementing [`Stage`]: built once from its
//! [`Config`], then asked for one [`Outcome`] per record. The SDK does the
//! rest: it decodes the columnar batch of the WIT contract
//! (`wit/stage.wit`), calls the stage record by record, and encodes the
//! outcomes. [`export_stage!`] turns the type into a WebAssembly component
//! export when built for `wasm32-wasip2`; on other targets the same type runs
//! natively through [`NativeStage`] (the host's benchmark uses that).
//!
//! ```ignore
//! use stage_sdk::{Config, Context, Outcome, Record, Stage};
//!
//! struct DropTests;
//! impl Stage for DropTests {
//!     fn init(config: &Config) -> Result<Self, String> {
//!         config.only(&[])?;
//!         Ok(DropTests)
//!     }
//!     fn process(&mut self, record: &Record<'_>, _: &Context) -> Outcome {
//!         match record.field("test").and_then(|v| v.as_str()) {
//!             Some(_) => Outcome::Drop,
//!             None => Outcome::Keep,
//!         }
//!     }
//! }
//! stage_sdk::export_stage!(DropTests);
//! ```
//!
//! Layout:
//! - [`json`]: lazy access to one field of an event, fragment building.
//! - [`batch`]: the columnar batch and outcome types, shared with the host.
//! - [`config`]: the stage's key/value settings.

pub mod batch;
pub mod case;
pub mod config;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;
pub mod json;
pub mod time;

pub use batch::{Batch, Context, Header, Outcomes, Record, SideRecord};
pub use config::Config;
pub use json::Fields;

/// What a stage decides for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pass the record on unchanged.
    Keep,
    /// Filter the record out.
    Drop,
    /// Pass the record on with these members merged into its JSON object.
    Append(Fields),
    /// Replace the record with zero or more records.
    Replace(Vec<Replacement>),
    /// The record cannot be processed: send it to the dead-letter topic with
    /// this reason.
    Fail(String),
    /// The record (kept, appended or replacing) goes to these routes
    /// instead of the default output. Made by [`Outcome::to`].
    Routed(Routes, Routed),
}

/// The outcomes a record can be routed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Pass the record on unchanged.
    Keep,
    /// Pass it on with these members merged in.
    Append(Fields),
    /// Replace it with these records (each goes to the routes).
    Replace(Vec<Replacement>),
}

impl From<Routed> for Outcome {
    fn from(r: Routed) -> Self {
        match r {
            Routed::Keep => Outcome::Keep,
            Routed::Append(f) => Outcome::Append(f),
            Routed::Replace(r) => Outcome::Replace(r),
        }
    }
}

impl Outcome {
    /// A failure with a reason.
    pub fn fail(reason: impl Into<String>) -> Self {
        Outcome::Fail(reason.into())
    }

    /// This outcome sent to `route` (besides any route it already has)
    /// instead of the default output: `Outcome::Keep.to(suspicious)`. The
    /// record still goes through the later stages. Dropping and failing
    /// records have nowhere to go: their outcome is returned unchanged.
    pub fn to(self, route: Route) -> Outcome {
        let routes = Routes::NONE.with(route);
        match self {
            Outcome::Keep => Outcome::Routed(routes, Routed::Keep),
            Outcome::Append(f) => Outcome::Routed(routes, Routed::Append(f)),
            Outcome::Replace(r) => Outcome::Routed(routes, Routed::Replace(r)),
            Outcome::Routed(had, o) => Outcome::Routed(had.with(route), o),
            Outcome::Drop | Outcome::Fail(_) => self,
        }
    }
}

/// A named output a stage declared with [`Config::route`]: its index in
/// the stage's route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route(u16);

impl Route {
    /// Most routes a stage may declare.
    pub const MAX: usize = 64;

    /// The route at `index` of the stage's declared names (what
    /// [`Config::route`] returns; for batch stages and tests).
    pub const fn at(index: u16) -> Self {
        Route(index)
    }

    /// Its index in the stage's route names.
    pub const fn index(self) -> u16 {
        self.0
    }
}

/// A set of a stage's routes (at most [`Route::MAX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routes(u64);

impl Routes {
    /// No route.
    pub const NONE: Routes = Routes(0);

    /// This set with `route` added.
    pub const fn with(self, route: Route) -> Routes {
        Routes(self.0 | 1 << (route.0 as u32 % 64))
    }

    /// True when no route is in the set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The routes' indexes, ascending: one step per route in the set (an
    /// empty set costs nothing, which matters once a batch has a routed
    /// record and every later record's routes are listed).
    pub fn indexes(self) -> impl Iterator<Item = u16> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let i = rest.trailing_zeros() as u16;
                rest &= rest - 1;
                i
            })
        })
    }
}

/// A record that replaces an input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// Key; `None` keeps the input record's key.
    pub key: Option<Vec<u8>>,
    /// Value (a JSON object if another stage follows).
    pub value: Vec<u8>,
    /// Headers added to the input record's.
    pub headers: Vec<Header>,
}

impl Replacement {
    /// A replacement with this value, the input's key and no extra headers.
    pub fn value(value: Vec<u8>) -> Self {
        Self {
            key: None,
            value,
            headers: Vec::new(),
        }
    }
}

/// A transform stage. Implement this and call [`export_stage!`].
pub trait Stage: Sized + 'static {
    /// Builds the stage from its configuration, or refuses it with a message
    /// naming the setting and what is wrong.
    fn init(config: &Config) -> Result<Self, String>;

    /// Decides one record. `context` carries the host's time and the source
    /// partition of the batch. Route a record with [`Outcome::to`].
    fn process(&mut self, record: &Record<'_>, context: &Context) -> Outcome;
}

/// A stage that handles a whole batch at once. Every [`Stage`] is one; implement
/// this directly only when a decision needs the whole batch (and then return
/// exactly one verdict per record, or the host fails the batch).
pub trait BatchStage: Sized + 'static {
    /// Builds the stage from its configuration, or refuses it.
    fn init(config: &Config) -> Result<Self, String>;

    /// Processes one batch.
    fn process_batch(&mut self, batch: &Batch) -> Outcomes;
}

impl<S: Stage> BatchStage for S {
    fn init(config: &Config) -> Result<Self, String> {
        <S as Stage>::init(config)
    }

    fn process_batch(&mut self, batch: &Batch) -> Outcomes {
        process_batch(self, batch)
    }
}

/// Runs `stage` over every record of `batch`.
pub fn process_batch<S: Stage>(stage: &mut S, batch: &Batch) -> Outcomes {
    let mut out = batch::OutcomesBuilder::with_capacity(batch.len());
    for record in batch.records() {
        out.push(stage.process(&record, &batch.context));
    }
    out.finish()
}

/// A stage behind a trait object, as the host runs native stages.
pub trait NativeStage {
    /// Processes a batch.
    fn process_batch(&mut self, batch: &Batch) -> Outcomes;
}

impl<S: BatchStage> NativeStage for S {
    fn process_batch(&mut self, batch: &Batch) -> Outcomes {
        BatchStage::process_batch(self, batch)
    }
}

/// A stage that keeps state across batches (windows, counters): the
/// `stateful-stage` world. Export it with [`export_stateful_stage!`].
///
/// The host snapshots the state after every batch and checkpoints it with
/// the consumer group's commits; after a restart or a rebalance it calls
/// [`StatefulStage::restore`] with the state taken at the committed offset,
/// and the records after that offset are processed again. A stage that
/// derives everything from its state and its input is therefore exact
/// across crashes. The same happens when the stage is hot-swapped: the new
/// version receives the old version's snapshot.
pub trait StatefulStage: BatchStage {
    /// Called periodically and at shutdown with the host's time
    /// (`context.now_ms`); returns records for side outputs (for example
    /// windows that closed on processing time).
    fn on_timer(&mut self, context: &Context) -> Vec<SideRecord>;

    /// The stage's whole state as bytes.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with one produced by [`StatefulStage::snapshot`]
    /// of this or an earlier version of the stage.
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
}

/// Wraps a [`StatefulStage`] so the guest glue can hold it beside stateless
/// stages.
#[doc(hidden)]
pub struct Stateful<S>(pub S);

/// The stateful half of a stage, as the guest glue calls it.
#[doc(hidden)]
pub trait StateHooks {
    fn process_batch(&mut self, batch: &Batch) -> Outcomes;
    fn on_timer(&mut self, context: &Context) -> Vec<SideRecord>;
    fn snapshot(&self) -> Vec<u8>;
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
}

impl<S: StatefulStage> StateHooks for Stateful<S> {
    fn process_batch(&mut self, batch: &Batch) -> Outcomes {
        BatchStage::process_batch(&mut self.0, batch)
    }
    fn on_timer(&mut self, context: &Context) -> Vec<SideRecord> {
        self.0.on_timer(context)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.0.restore(state)
    }
}

/// Severity of a [`log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// For the stage's author.
    Debug,
    /// Normal operation.
    Info,
    /// Something is off.
    Warn,
    /// Something failed.
    Error,
}

/// Writes a line to the host's log (tagged with the stage's name). Outside
/// WebAssembly this does nothing.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    guest::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// Exports a [`Stage`] (or [`BatchStage`]) type as the component's
/// `transform` interface.
/// Expands to nothing outside WebAssembly, so a stage crate also builds
/// natively (for tests and the host's benchmark).
#[macro_export]
macro_rules! export_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct Component;
            impl $crate::guest::bindings::exports::pipeline::stage::transform::Guest for Component {
                fn init(
                    config: ::std::vec::Vec<$crate::guest::bindings::pipeline::stage::types::ConfigEntry>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::guest::init::<$stage>(config)
                }
                fn routes() -> ::std::vec::Vec<::std::string::String> {
                    $crate::guest::routes()
                }
                fn process(
                    batch: $crate::guest::bindings::pipeline::stage::types::Batch,
                ) -> $crate::guest::bindings::pipeline::stage::types::Outcomes {
                    $crate::guest::process(batch)
                }
            }
            $crate::guest::bindings::__export_stage_bindings!(Component with_types_in $crate::guest::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::{Route, Routes};

    #[test]
    fn routes_list_their_indexes_ascending() {
        assert_eq!(Routes::NONE.indexes().count(), 0);
        let set = Routes::NONE
            .with(Route::at(63))
            .with(Route::at(0))
            .with(Route::at(5))
            .with(Route::at(5));
        assert_eq!(set.indexes().collect::<Vec<_>>(), [0, 5, 63]);
    }
}
