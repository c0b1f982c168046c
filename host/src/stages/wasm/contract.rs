//! The contract versions a stage may target, and the calls into its
//! exports: one code path for every version.
//!
//! A component exports `pipeline:stage/transform@V` (and, when stateful,
//! `pipeline:stage/stateful@V`) for V = 0.2.0 (routes) or 0.1.0. wasmtime
//! links 0.x versions only within a minor, so the host finds the exports
//! by name, version by version, and calls them as typed functions with
//! the Rust types of the 0.2.0 bindings: the records 0.1.0 shares with
//! 0.2.0 are the same shape, and a 0.1.0 `outcomes` (no route columns)
//! lifts into [`OutcomesV01`], then gains empty route columns. The 0.1.0
//! `host` import is linked beside the 0.2.0 one ([`link_v01`]).

use stage_sdk::batch::Outcomes;
use wasmtime::Store;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, Func, Instance, Lift, Linker, TypedFunc,
};

use super::host::HostState;
use super::wit;

/// A version of the contract a component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `pipeline:stage@0.1.0`: no routes.
    V01,
    /// `pipeline:stage@0.2.0`: routes.
    V02,
}

impl Version {
    /// The version's semver text.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V01 => "0.1.0",
            Version::V02 => "0.2.0",
        }
    }

    /// The newest first: a component is taken at the first it exports.
    const ALL: [Version; 2] = [Version::V02, Version::V01];

    fn interface(self, name: &str) -> String {
        format!("pipeline:stage/{name}@{}", self.as_str())
    }
}

/// The 0.1.0 `outcomes` record: 0.2.0's without the route columns.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct OutcomesV01 {
    verdicts: Vec<wit::Verdict>,
    data: Vec<u8>,
    #[component(name = "data-ends")]
    data_ends: Vec<u32>,
    replacements: Vec<wit::NewRecord>,
    side: Vec<wit::SideRecord>,
}

/// Where a component's exports are, found once when it loads.
#[derive(Debug, Clone)]
pub(super) struct Exports {
    pub version: Version,
    init: ComponentExportIndex,
    routes: Option<ComponentExportIndex>,
    process: ComponentExportIndex,
    stateful: Option<[ComponentExportIndex; 3]>,
}

impl Exports {
    /// The exports of `component`, or why it does not implement a `stage`
    /// world of any version the host knows.
    pub fn find(component: &Component) -> Result<Self, String> {
        let Some(version) = Version::ALL.into_iter().find(|v| {
            component
                .get_export_index(None, v.interface("transform"))
                .is_some()
        }) else {
            return Err(format!(
                "does not implement the world pipeline:stage/stage (0.2.0 or 0.1.0): it exports no {} or {}",
                Version::V02.interface("transform"),
                Version::V01.interface("transform")
            ));
        };
        let func = |iface: &str, name: &str| -> Result<ComponentExportIndex, String> {
            let interface = version.interface(iface);
            let parent = component
                .get_export_index(None, &interface)
                .ok_or_else(|| format!("no export {interface}"))?;
            component
                .get_export_index(Some(&parent), name)
                .ok_or_else(|| {
                    format!(
                        "does not implement the world pipeline:stage/stage@{}: {interface} has no function {name}",
                        version.as_str()
                    )
                })
        };
        let stateful = match component.get_export_index(None, version.interface("stateful")) {
            None => None,
            Some(_) => Some([
                func("stateful", "on-timer")?,
                func("stateful", "snapshot")?,
                func("stateful", "restore")?,
            ]),
        };
        Ok(Self {
            version,
            init: func("transform", "init")?,
            routes: match version {
                Version::V01 => None,
                Version::V02 => Some(func("transform", "routes")?),
            },
            process: func("transform", "process")?,
            stateful,
        })
    }

    /// True when the component exports `stateful`.
    pub fn is_stateful(&self) -> bool {
        self.stateful.is_some()
    }

    /// The typed functions of `instance` (checked against the contract's
    /// types: a mismatch is an error naming the function).
    pub fn load(
        &self,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Funcs> {
        let func = instance
            .get_func(&mut *store, self.process)
            .ok_or_else(|| wasmtime::format_err!("no function process"))?;
        // Checked here; checked again (cheaply) by each call.
        let process = match self.version {
            Version::V01 => {
                func.typed::<(&wit::Batch,), (OutcomesV01,)>(&*store)?;
                Process::V01(func)
            }
            Version::V02 => {
                func.typed::<(&wit::Batch,), (wit::Outcomes,)>(&*store)?;
                Process::V02(func)
            }
        };
        let routes = match &self.routes {
            None => None,
            Some(i) => Some(instance.get_typed_func(&mut *store, i)?),
        };
        let stateful = match &self.stateful {
            None => None,
            Some([on_timer, snapshot, restore]) => Some(StatefulFuncs {
                on_timer: instance.get_typed_func(&mut *store, on_timer)?,
                snapshot: instance.get_typed_func(&mut *store, snapshot)?,
                restore: instance.get_typed_func(&mut *store, restore)?,
            }),
        };
        Ok(Funcs {
            init: instance.get_typed_func(&mut *store, self.init)?,
            routes,
            process,
            stateful,
        })
    }
}

type InitFunc = TypedFunc<(Vec<wit::ConfigEntry>,), (Result<(), String>,)>;

/// An instance's exports as typed functions.
pub(super) struct Funcs {
    init: InitFunc,
    routes: Option<TypedFunc<(), (Vec<String>,)>>,
    process: Process,
    stateful: Option<StatefulFuncs>,
}

/// `process`, kept untyped: its typed form borrows the batch for one call.
enum Process {
    V01(Func),
    V02(Func),
}

struct StatefulFuncs {
    on_timer: TypedFunc<(wit::BatchContext,), (Vec<wit::SideRecord>,)>,
    snapshot: TypedFunc<(), (Vec<u8>,)>,
    restore: TypedFunc<(Vec<u8>,), (Result<(), String>,)>,
}

impl Funcs {
    /// `init`.
    pub fn init(
        &self,
        store: &mut Store<HostState>,
        config: Vec<wit::ConfigEntry>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.init.call(store, (config,))?.0)
    }

    /// `routes` (0.2.0); a 0.1.0 stage routes nothing.
    pub fn routes(&self, store: &mut Store<HostState>) -> wasmtime::Result<Vec<String>> {
        match &self.routes {
            None => Ok(Vec::new()),
            Some(f) => Ok(f.call(store, ())?.0),
        }
    }

    /// `process`, with the batch handed back for reuse.
    pub fn process(
        &self,
        store: &mut Store<HostState>,
        batch: wit::Batch,
    ) -> (wit::Batch, wasmtime::Result<Outcomes>) {
        let result = match &self.process {
            Process::V01(f) => f
                .typed::<(&wit::Batch,), (OutcomesV01,)>(&*store)
                .and_then(|f| f.call(&mut *store, (&batch,)))
                .map(|(o,)| from_v01(o)),
            Process::V02(f) => f
                .typed::<(&wit::Batch,), (wit::Outcomes,)>(&*store)
                .and_then(|f| f.call(&mut *store, (&batch,)))
                .map(|(o,)| {
                    stage_sdk::move_outcomes!(o, wit::Verdict => Outcomes, stage_sdk::batch::Verdict, stage_sdk::batch::NewRecord, stage_sdk::batch::Header, stage_sdk::batch::SideRecord)
                }),
        };
        (batch, result)
    }

    /// `on-timer` (stateful stages; others return nothing).
    pub fn on_timer(
        &self,
        store: &mut Store<HostState>,
        context: wit::BatchContext,
    ) -> wasmtime::Result<Vec<wit::SideRecord>> {
        match &self.stateful {
            None => Ok(Vec::new()),
            Some(s) => Ok(s.on_timer.call(store, (context,))?.0),
        }
    }

    /// `snapshot` (stateful stages).
    pub fn snapshot(&self, store: &mut Store<HostState>) -> wasmtime::Result<Option<Vec<u8>>> {
        match &self.stateful {
            None => Ok(None),
            Some(s) => Ok(Some(s.snapshot.call(store, ())?.0)),
        }
    }

    /// `restore` (stateful stages).
    pub fn restore(
        &self,
        store: &mut Store<HostState>,
        state: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        match &self.stateful {
            None => Ok(Ok(())),
            Some(s) => Ok(s.restore.call(store, (state,))?.0),
        }
    }
}

fn from_v01(o: OutcomesV01) -> Outcomes {
    #[allow(dead_code)]
    struct WithRoutes {
        verdicts: Vec<wit::Verdict>,
        data: Vec<u8>,
        data_ends: Vec<u32>,
        replacements: Vec<wit::NewRecord>,
        side: Vec<wit::SideRecord>,
        route_ends: Vec<u32>,
        routes: Vec<u16>,
    }
    let o = WithRoutes {
        verdicts: o.verdicts,
        data: o.data,
        data_ends: o.data_ends,
        replacements: o.replacements,
        side: o.side,
        route_ends: Vec::new(),
        routes: Vec::new(),
    };
    stage_sdk::move_outcomes!(o, wit::Verdict => Outcomes, stage_sdk::batch::Verdict, stage_sdk::batch::NewRecord, stage_sdk::batch::Header, stage_sdk::batch::SideRecord)
}

/// Links the 0.1.0 imports beside the 0.2.0 ones: the `types` instance
/// (types only) and `host.log`, which logs as 0.2.0's does.
pub(super) fn link_v01(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(&Version::V01.interface("types"))?;
    linker
        .instance(&Version::V01.interface("host"))?
        .func_wrap(
            "log",
            |mut store: wasmtime::StoreContextMut<'_, HostState>,
             (level, message): (wit::Level, String)| {
                use super::bindings::pipeline::stage::host::Host as _;
                store.data_mut().log(level, message)
            },
        )?;
    Ok(())
}
