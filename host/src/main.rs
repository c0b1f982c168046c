//! The `pipeline-host` command line: parses flags, sets up logging, and
//! runs the pipeline or one of the tool subcommands. Everything else lives
//! in the library crate.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pipeline_host::cmd::{bench, generate, view};
use pipeline_host::config::{Overrides, PipelineConfig};
use pipeline_host::events::EventMix;
use pipeline_host::kafka::security::SecurityArgs;
use pipeline_host::kafka::{Kafka, KafkaError, KafkaSettings};
use pipeline_host::source::StartFrom;
use pipeline_host::stages::Tombstones;
use pipeline_host::{Pipeline, PipelineError, shutdown};

/// The static (musl) build uses mimalloc: musl's own allocator costs about
/// half the throughput on this workload.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A librdkafka-free Kafka pipeline whose transform stages are sandboxed
/// WebAssembly components.
#[derive(Debug, Parser)]
#[command(
    name = "pipeline-host",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PIPELINE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Produce seed-format login events to a topic.
    Generate(GenerateArgs),
    /// Print a topic's records as JSON lines.
    View(ViewArgs),
    /// Benchmark the default chain in memory: WebAssembly vs native.
    Bench(BenchArgs),
    /// Check by event identity that every input record reached the output
    /// or the dead-letter topic (or was filtered): prints missing and
    /// duplicated records per partition; exit 1 if any is missing. Takes
    /// the same flags as running the pipeline.
    Audit(Box<RunArgs>),
    /// Consumer-group tools: describe a group, reset its offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Stage author's tools: validate a component, run it over JSON lines.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// End-to-end latency: tail a topic and measure record timestamp ->
    /// readable, printing p50/p99/max as one JSON line.
    Latency(LatencyArgs),
    /// Global window counts from the stats topic of `version_counts`:
    /// latest record per key, summed over input partitions (JSON lines).
    Counts(CountsArgs),
    /// Copy dead letters back into the input topic once their cause is
    /// fixed (optionally only those of one stage): the original key, value
    /// and headers, without the pipeline's error headers.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
struct CountsArgs {
    #[command(flatten)]
    connection: Connection,
    /// The stats topic (`outputs = { counts = "..." }` of the stage).
    #[arg(long, default_value = "app-version-counts")]
    topic: String,
}

#[derive(Debug, Args)]
struct Connection {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(long, env = "PIPELINE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// How long to wait for the brokers at start-up, milliseconds.
    #[arg(long, default_value_t = 60_000)]
    connect_timeout_ms: u64,
    #[command(flatten)]
    security: SecurityArgs,
}

impl Connection {
    fn brokers(&self) -> Vec<String> {
        pipeline_host::config::split_list(&self.bootstrap)
    }

    async fn connect(&self) -> anyhow::Result<Kafka> {
        let settings = KafkaSettings {
            bootstrap: pipeline_host::config::split_list(&self.bootstrap),
            connect_timeout: std::time::Duration::from_millis(self.connect_timeout_ms),
            transport: self.security.clone().transport()?,
            ..KafkaSettings::default()
        };
        Ok(Kafka::connect(settings).await?)
    }
}

#[derive(Debug, Args, Default)]
struct RunArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Bootstrap brokers, comma-separated host:port (default 127.0.0.1:9092).
    #[arg(long, env = "PIPELINE_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Input topic.
    #[arg(long)]
    input: Option<String>,
    /// Output topic.
    #[arg(long)]
    output: Option<String>,
    /// Dead-letter topic (default: <input>-dlq).
    #[arg(long)]
    dlq: Option<String>,
    /// A stage component (.wasm or .wat), repeatable; runs in the order given.
    /// Replaces the config file's stages.
    #[arg(long = "plugin")]
    plugins: Vec<PathBuf>,
    /// A stage setting, STAGE.KEY=VALUE (STAGE is the file stem or the
    /// configured name), repeatable.
    #[arg(long = "stage-config")]
    stage_config: Vec<String>,
    /// Where to start without a committed offset.
    #[arg(long, value_enum)]
    start: Option<StartFrom>,
    /// What to do with null values (tombstones).
    #[arg(long, value_enum)]
    tombstones: Option<Tombstones>,
    /// Create missing topics (true by default).
    #[arg(long)]
    create_topics: Option<bool>,
    /// Partitions of topics the host creates.
    #[arg(long)]
    partitions: Option<i32>,
    /// Replication factor of topics the host creates; -1 (the default)
    /// takes the broker's `default.replication.factor`, so a three-broker
    /// cluster gets three copies without a flag.
    #[arg(long, allow_negative_numbers = true)]
    replication_factor: Option<i16>,
    /// Client id sent to the brokers.
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    security: SecurityArgs,
    /// Timeout of one broker request, milliseconds.
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// How long to wait for the brokers at start-up, milliseconds.
    #[arg(long)]
    connect_timeout_ms: Option<u64>,
    /// Bytes per fetch request.
    #[arg(long)]
    fetch_max_bytes: Option<i32>,
    /// How long the broker may hold a fetch for new data, milliseconds.
    #[arg(long)]
    fetch_max_wait_ms: Option<u64>,
    /// Interval of the statistics log line, milliseconds.
    #[arg(long)]
    stats_interval_ms: Option<u64>,
    /// How long a clean shutdown may take, milliseconds.
    #[arg(long)]
    shutdown_timeout_ms: Option<u64>,
    /// Stop once every partition is read up to the end it had at start.
    #[arg(long)]
    until_end: bool,
    /// Consumer group: resume from its committed offsets, commit delivered
    /// offsets, and share the partitions with the group's other members.
    #[arg(long, env = "PIPELINE_GROUP")]
    group: Option<String>,
    /// Static member id (group.instance.id): a restart within the session
    /// timeout keeps the assignment without a rebalance.
    #[arg(long, env = "PIPELINE_GROUP_INSTANCE_ID")]
    group_instance_id: Option<String>,
    /// The coordinator drops a member silent for this long, milliseconds.
    #[arg(long)]
    session_timeout_ms: Option<u64>,
    /// How long members have to rejoin during a rebalance, milliseconds.
    #[arg(long)]
    rebalance_timeout_ms: Option<u64>,
    /// Heartbeat interval, milliseconds.
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// Commit interval, milliseconds.
    #[arg(long)]
    commit_interval_ms: Option<u64>,
    /// Partition assignment strategy.
    #[arg(long, value_enum)]
    assignor: Option<pipeline_host::group::Assignor>,
    /// Largest batch handed to the stages, in records (fetches are split).
    #[arg(long)]
    max_batch_records: Option<usize>,
    /// Folder of compiled components (default ~/.cache/pipeline-host/compiled).
    #[arg(long)]
    compile_cache: Option<PathBuf>,
    /// Compile every stage at start instead of using the compile cache.
    #[arg(long, conflicts_with = "compile_cache")]
    no_compile_cache: bool,
    /// Serve the admin HTTP endpoint on this address (POST /reload,
    /// GET /stages, GET /health).
    #[arg(long)]
    admin: Option<String>,
    /// File with the token the admin endpoint requires (Authorization:
    /// Bearer); env PIPELINE_ADMIN_TOKEN wins. /healthz and /readyz stay open.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Reload a stage when its plugin file or the config file changes.
    #[arg(long)]
    watch: Option<bool>,
    /// Topic of stateful stages' checkpoints (default <input>-state).
    #[arg(long)]
    state_topic: Option<String>,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    #[command(flatten)]
    connection: Connection,
    /// Topic to produce to.
    #[arg(long, default_value = "user-login")]
    topic: String,
    /// Events to produce (default: no end).
    #[arg(long)]
    count: Option<u64>,
    /// Events per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of undecodable events, 0..1.
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Share of events missing a field (or with a garbage timestamp), 0..1.
    #[arg(long, default_value_t = 0.0)]
    missing: f64,
    /// Partitions if the topic has to be created.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Draw user ids (the keys) from this many users, so keys repeat
    /// (default: a new user per event).
    #[arg(long)]
    users: Option<u64>,
    /// Records per produce request and partition.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

#[derive(Debug, Args)]
struct ViewArgs {
    #[command(flatten)]
    connection: Connection,
    /// Topic to read.
    #[arg(long, default_value = "processed-user-login")]
    topic: String,
    /// Start at the beginning or the end.
    #[arg(long, value_enum, default_value_t = StartFrom::Earliest)]
    from: StartFrom,
    /// Exit at the end instead of waiting for new records.
    #[arg(long)]
    no_follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<u64>,
    /// Print partition, offset, key and headers around each value.
    #[arg(long)]
    meta: bool,
    /// Pretty-print and colour: auto (on a terminal), always, never.
    #[arg(long, value_enum, default_value_t = Pretty::Auto)]
    pretty: Pretty,
}

/// Which group, on which brokers and input topic.
#[derive(Debug, Args)]
struct GroupTarget {
    #[command(flatten)]
    connection: Connection,
    /// Group id.
    #[arg(long)]
    group: String,
    /// Input topic of the group.
    #[arg(long, default_value = "user-login")]
    topic: String,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Members, assignment, committed offsets and lag per partition.
    Describe(GroupTarget),
    /// Move the group's committed offsets; refused while it has members.
    Reset {
        #[command(flatten)]
        target: GroupTarget,
        /// earliest, latest, timestamp:MILLIS or offset:N.
        #[arg(long)]
        to: pipeline_host::cmd::group::ResetTo,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Compile and validate a component against the stage world, run its
    /// init with the given settings, and print what it is.
    Check {
        /// The component (.wasm or .wat).
        file: PathBuf,
        /// A setting KEY=VALUE, repeatable.
        #[arg(long = "config")]
        config: Vec<String>,
    },
    /// Run a stage over JSON lines from standard input (one event per
    /// line) and print one outcome per line; no broker needed.
    Run {
        /// The component (.wasm or .wat).
        file: PathBuf,
        /// A setting KEY=VALUE, repeatable.
        #[arg(long = "config")]
        config: Vec<String>,
        /// Records per batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

fn settings(config: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    config
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--config {c}: expected KEY=VALUE"))
        })
        .collect()
}

#[derive(Debug, Args)]
struct RedriveArgs {
    #[command(flatten)]
    connection: Connection,
    /// Dead-letter topic to read.
    #[arg(long, default_value = "user-login-dlq")]
    dlq: String,
    /// Topic to write the records back to (default: each record's source topic).
    #[arg(long)]
    to: Option<String>,
    /// Only records failed by this stage.
    #[arg(long)]
    stage: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Pretty {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Events per run.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Folder with the default stages' .wasm files.
    #[arg(long, default_value = "plugins")]
    plugins_dir: PathBuf,
    /// Runs per mode (the best is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Instead of the in-memory chain, measure the broker alone at this
    /// address: produce then fetch `--events` events (topic `bench-ceiling`).
    #[arg(long)]
    broker: Option<String>,
    /// Partitions of the broker benchmark's topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

#[derive(Debug, Args)]
struct LatencyArgs {
    #[command(flatten)]
    connection: Connection,
    /// Topic to tail (the pipeline's output).
    #[arg(long)]
    topic: String,
    /// Seconds ignored at the start.
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

/// Exit statuses, documented in the README.
mod exit {
    pub const CONFIG: u8 = 2;
    pub const STAGE: u8 = 3;
    pub const KAFKA: u8 = 4;
    pub const SHUTDOWN_TIMEOUT: u8 = 5;
    pub const GROUP: u8 = 6;
    pub const REFUSED: u8 = 7;
    pub const DENIED: u8 = 8;
    pub const OTHER: u8 = 1;
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rskafka=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(exit::OTHER);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => run(cli.run).await,
            Some(Command::Run(args)) => run(*args).await,
            Some(Command::Generate(args)) => generate(args).await.map_err(Failure::Other),
            Some(Command::View(args)) => view(args).await.map_err(Failure::Other),
            Some(Command::Bench(args)) => bench(args).await.map_err(Failure::Other),
            Some(Command::Audit(args)) => audit(*args).await,
            Some(Command::Group(cmd)) => group(cmd).await.map_err(Failure::Other),
            Some(Command::Plugin(cmd)) => plugin(cmd),
            Some(Command::Redrive(args)) => redrive(args).await.map_err(Failure::Other),
            Some(Command::Counts(args)) => counts(args).await.map_err(Failure::Other),
            Some(Command::Latency(args)) => latency(args).await.map_err(Failure::Other),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Pipeline(e)) => {
            tracing::error!(error = %e, "pipeline-host failed");
            let code = match e {
                PipelineError::Config(_) => exit::CONFIG,
                PipelineError::Stage(_) => exit::STAGE,
                PipelineError::Kafka(KafkaError::Refused(_)) => exit::REFUSED,
                PipelineError::Kafka(KafkaError::Denied { .. }) => exit::DENIED,
                PipelineError::Kafka(_) => exit::KAFKA,
                PipelineError::ShutdownTimeout(_) => exit::SHUTDOWN_TIMEOUT,
                PipelineError::Group(_) => exit::GROUP,
            };
            ExitCode::from(code)
        }
        Err(Failure::Other(e)) => {
            tracing::error!(error = format!("{e:#}"), "pipeline-host failed");
            ExitCode::from(exit::OTHER)
        }
    }
}

enum Failure {
    Pipeline(PipelineError),
    Other(anyhow::Error),
}

fn pipeline(args: RunArgs) -> Result<Pipeline, Failure> {
    let overrides = Overrides {
        bootstrap: args.bootstrap,
        client_id: args.client_id,
        security: args.security,
        input: args.input,
        output: args.output,
        dead_letter: args.dlq,
        start: args.start,
        tombstones: args.tombstones,
        plugins: args.plugins,
        stage_settings: args.stage_config,
        create_topics: args.create_topics,
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        request_timeout_ms: args.request_timeout_ms,
        connect_timeout_ms: args.connect_timeout_ms,
        stats_interval_ms: args.stats_interval_ms,
        shutdown_timeout_ms: args.shutdown_timeout_ms,
        fetch_max_bytes: args.fetch_max_bytes,
        fetch_max_wait_ms: args.fetch_max_wait_ms,
        group: args.group,
        group_instance_id: args.group_instance_id,
        session_timeout_ms: args.session_timeout_ms,
        rebalance_timeout_ms: args.rebalance_timeout_ms,
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        commit_interval_ms: args.commit_interval_ms,
        assignor: args.assignor,
        max_batch_records: args.max_batch_records,
        compile_cache: if args.no_compile_cache {
            Some(PathBuf::new())
        } else {
            args.compile_cache
        },
        admin: args.admin,
        admin_token_file: args.admin_token_file,
        watch: args.watch,
        state_topic: args.state_topic,
    };
    let config = PipelineConfig::load(args.config.as_deref(), overrides)
        .map_err(|e| Failure::Pipeline(e.into()))?;
    Ok(Pipeline::prepare(config)
        .map_err(Failure::Pipeline)?
        .until_end(args.until_end))
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    let pipeline = pipeline(args)?;
    let (trigger, sd) = shutdown::channel();
    shutdown::on_signals(trigger);
    pipeline
        .run(sd)
        .await
        .map(|_| ())
        .map_err(Failure::Pipeline)
}

async fn audit(args: RunArgs) -> Result<(), Failure> {
    let pipeline = pipeline(args)?;
    let cfg = pipeline.config().clone();
    let kafka = Kafka::connect(cfg.kafka.clone())
        .await
        .map_err(|e| Failure::Pipeline(e.into()))?;
    let mut chain = pipeline.chain().map_err(|e| Failure::Pipeline(e.into()))?;
    let report = pipeline_host::cmd::audit::run(
        &kafka,
        &mut chain,
        &cfg.input,
        &cfg.output,
        &cfg.dead_letter,
    )
    .await
    .map_err(|e| Failure::Pipeline(e.into()))?;
    print!("{}", pipeline_host::cmd::audit::table(&report));
    let missing: u64 = report.values().map(|a| a.missing).sum();
    if missing > 0 {
        return Err(Failure::Other(anyhow::anyhow!(
            "{missing} input records are missing from {} and {}",
            cfg.output,
            cfg.dead_letter
        )));
    }
    Ok(())
}

async fn group(cmd: GroupCommand) -> anyhow::Result<()> {
    use pipeline_host::cmd::group as tools;
    match cmd {
        GroupCommand::Describe(GroupTarget {
            connection,
            group,
            topic,
        }) => {
            let kafka = connection.connect().await?;
            let (d, rows) = tools::describe(&kafka, &connection.brokers(), &group, &topic).await?;
            print!("{}", tools::describe_table(&group, &topic, &d, &rows));
        }
        GroupCommand::Reset {
            target:
                GroupTarget {
                    connection,
                    group,
                    topic,
                },
            to,
        } => {
            let kafka = connection.connect().await?;
            let offsets = tools::reset(&kafka, &connection.brokers(), &group, &topic, &to).await?;
            for (p, o) in offsets {
                println!("{topic} partition {p}: committed offset set to {o}");
            }
        }
    }
    Ok(())
}

fn plugin(cmd: PluginCommand) -> Result<(), Failure> {
    use pipeline_host::cmd::plugin as tools;
    let stage = |e: pipeline_host::stages::StageError| Failure::Pipeline(e.into());
    match cmd {
        PluginCommand::Check { file, config } => {
            let config = settings(&config).map_err(Failure::Other)?;
            let r = tools::check(&file, &config).map_err(stage)?;
            // A closed stdout (`| head -1`) is not an error worth a panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}: a valid pipeline:stage/{}@0.1.0 component ({} bytes, {} in {} ms); init accepted {} setting(s)\nsha256 = \"{}\"",
                r.name,
                r.world,
                r.bytes,
                if r.cached {
                    "loaded from the compile cache"
                } else {
                    "compiled"
                },
                r.compile_ms,
                config.len(),
                r.sha256
            );
        }
        PluginCommand::Run {
            file,
            config,
            batch,
        } => {
            let config = settings(&config).map_err(Failure::Other)?;
            let mut chain = tools::single_stage(&file, &config).map_err(stage)?;
            let stdin = std::io::stdin().lock();
            let stdout = std::io::stdout().lock();
            tools::run(&mut chain, stdin, std::io::BufWriter::new(stdout), batch)
                .map_err(|e| Failure::Other(e.into()))?;
        }
    }
    Ok(())
}

async fn redrive(args: RedriveArgs) -> anyhow::Result<()> {
    let kafka = args.connection.connect().await?;
    let n = pipeline_host::cmd::redrive::run(
        &kafka,
        &args.dlq,
        args.to.as_deref(),
        args.stage.as_deref(),
    )
    .await?;
    println!("re-drove {n} dead letters from {}", args.dlq);
    Ok(())
}

async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&(args.malformed + args.missing)),
        "--malformed + --missing must be within 0..1"
    );
    let kafka = args.connection.connect().await?;
    let (trigger, sd) = shutdown::channel();
    shutdown::on_signals(trigger);
    let opts = generate::GenerateOptions {
        topic: args.topic,
        count: args.count,
        rate: args.rate,
        seed: args.seed,
        mix: EventMix {
            malformed: args.malformed,
            missing: args.missing,
            users: args.users,
            ..EventMix::default()
        },
        partitions: args.partitions,
        batch: args.batch.max(1),
    };
    generate::run(&kafka, &opts, sd)
        .await
        .context("generating events")?;
    Ok(())
}

async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let kafka = args.connection.connect().await?;
    let l = pipeline_host::cmd::latency::measure(
        &kafka,
        &args.topic,
        std::time::Duration::from_secs(args.warmup_secs),
        std::time::Duration::from_secs(args.seconds),
    )
    .await
    .context("measuring latency")?;
    println!(
        "{}",
        serde_json::json!({"records": l.records, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "max_ms": l.max_ms})
    );
    Ok(())
}

async fn counts(args: CountsArgs) -> anyhow::Result<()> {
    let kafka = args.connection.connect().await?;
    let rows = pipeline_host::cmd::counts::global(&kafka, &args.topic)
        .await
        .context("reading the window counts")?;
    for r in rows {
        println!(
            "{}",
            serde_json::json!({
                "window_start": r.window_start,
                "window_start_ms": r.window_start_ms,
                "app_version": r.app_version,
                "count": r.count,
                "partitions": r.partitions,
            })
        );
    }
    Ok(())
}

async fn view(args: ViewArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let kafka = args.connection.connect().await?;
    let (trigger, sd) = shutdown::channel();
    shutdown::on_signals(trigger);
    let opts = view::ViewOptions {
        topic: args.topic,
        from: args.from,
        follow: !args.no_follow,
        max: args.max,
        meta: args.meta,
        pretty: match args.pretty {
            Pretty::Always => true,
            Pretty::Never => false,
            Pretty::Auto => std::io::stdout().is_terminal(),
        },
    };
    view::run(&kafka, &opts, sd)
        .await
        .context("viewing the topic")?;
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(bootstrap) = args.broker {
        let kafka = Connection {
            bootstrap,
            connect_timeout_ms: 60_000,
            security: SecurityArgs::default(),
        }
        .connect()
        .await?;
        let c = bench::broker_ceiling(&kafka, "bench-ceiling", args.events as u64, args.partitions)
            .await
            .context("measuring the broker")?;
        println!(
            "{}",
            serde_json::json!({"produce_per_sec": c.produce_per_sec.round(), "fetch_per_sec": c.fetch_per_sec.round()})
        );
        return Ok(());
    }
    let opts = bench::BenchOptions {
        events: args.events,
        batch: args.batch,
        plugins_dir: args.plugins_dir,
        runs: args.runs,
    };
    let rows = bench::run(&opts).context(
        "running the benchmark (build the plugins first: tests/scripts/build-plugins.sh)",
    )?;
    print!("{}", bench::table(&rows, &opts));
    Ok(())
}
