//! `modelship validate`'s arguments, parsed low (strings), typed by `validate::run`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

pub const HELP: &str = "\
Judges a model before it is deployed, each gate pass or fail with the value it measured:
  quality       metrics on labelled rows (--data FILE --label COLUMN) against
                --min/--max, and with --against, the regression against the
                reference model on the same rows (--max-drop)
  contract      inputs and outputs (name, datatype, shape) and /v1/predict's
                output against the reference (--against): a removed or renamed
                input, a changed datatype or shape is breaking and fails,
                unless the model is a new major version (2.0.0 over 1.4.0, or
                --major); a new output is not breaking
  latency       p50 and p99 of timed runs at batch 1 (and --batch N) on this
                machine, one thread, against --max-p99 [BATCH=]DURATION
  resources     resident memory after loading, per further worker and while
                running, and the Deployment's requests and limits for --workers
                N (against --max-memory)
  distribution  PSI of the predictions against the reference's on the same rows
                (--max-psi, default 0.1, as the rollout's drift check)
Every gate whose inputs are given runs; --gate picks some. Models are .onnx files or registry \
references (NAME:VERSION, NAME@ALIAS, NAME; --registry, MODELSHIP_REGISTRY).

Data: a CSV or Parquet file with a header. The label column and --ignore columns are not fed to \
the model; an input named like a column takes that column, and the one input left of shape \
[N, F] takes the remaining F columns in file order. Predictions are what /v1/predict answers: a \
binary classifier's probability of class 1 (--task classification: auc, accuracy, log_loss), else \
the output's value (--task regression: rmse, mae, r2).

Exit status: 0 every gate passed; 1 a gate failed (the report says which); 2 the command could \
not judge: bad flags, unreadable files, data that does not fit the model, a reference not found, \
ONNX Runtime missing (the message says what to fix).

--record writes the results on the registry version (metrics validate.auc, validate.p99_batch_1_ms, \
validate.memory_request_mib, validate.psi...; labels validate=pass|fail, validate.data, \
validate.against): `modelship models show` lists them.

Examples:
  modelship validate fraud.onnx --data holdout.csv --label is_fraud \\
      --min auc=0.92 --min accuracy=0.9 --max log_loss=0.3
  modelship validate fraud:1.3.0 --against fraud@production \\
      --data holdout.parquet --label is_fraud \\
      --max-drop auc=0.005 --max-psi 0.1 --record
  modelship validate fraud.onnx --max-p99 5ms --batch 32 --max-p99 32=20ms \\
      --workers 4 --max-memory 512Mi
  modelship validate fraud:2.0.0 --against fraud@production --gate contract
  modelship validate fraud.onnx --data holdout.csv --label is_fraud \\
      --min auc=0.92 --output markdown > comment.md";

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The model: a file (ONNX, or a pickle, joblib, XGBoost or LightGBM model, converted
    /// first and proven equal on --data's rows), or a registry reference NAME:VERSION,
    /// NAME@ALIAS, NAME (latest)
    #[arg(value_name = "MODEL")]
    pub model: String,

    /// The version a model file is (a registry reference has its own), for the report and the
    /// contract's rule that a new major version may break it: 2.0.0 against production's 1.4.0
    #[arg(long, value_name = "VERSION")]
    pub model_version: Option<String>,

    /// The reference version (production): for the contract, --max-drop and the distribution
    #[arg(long, value_name = "MODEL")]
    pub against: Option<String>,

    /// Labelled rows: a .csv or .parquet file with a header row
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,

    /// The data's ground truth column (0/1 for a classifier)
    #[arg(long, value_name = "COLUMN", requires = "data")]
    pub label: Option<String>,

    /// Columns that are neither label nor feature (ids, timestamps)
    #[arg(long, value_delimiter = ',', value_name = "A,B,...", requires = "data")]
    pub ignore: Vec<String>,

    /// What the model predicts [default: classification when its prediction output holds
    /// probabilities, else regression]
    #[arg(long, value_enum)]
    pub task: Option<TaskArg>,

    /// A floor on a metric, METRIC=VALUE (repeatable): auc, accuracy, r2
    #[arg(long, value_name = "METRIC=VALUE")]
    pub min: Vec<String>,

    /// A ceiling on a metric, METRIC=VALUE (repeatable): log_loss, rmse, mae
    #[arg(long, value_name = "METRIC=VALUE")]
    pub max: Vec<String>,

    /// The most a metric may be worse than the reference's on the same rows, METRIC=AMOUNT
    /// (repeatable; needs --against)
    #[arg(long, value_name = "METRIC=AMOUNT", requires = "against")]
    pub max_drop: Vec<String>,

    /// Breaking contract changes are allowed: this is a new major version
    #[arg(long)]
    pub major: bool,

    /// The p99 budget of one run, [BATCH=]DURATION (repeatable): 5ms (batch 1), 32=20ms
    #[arg(long, value_name = "[BATCH=]DURATION")]
    pub max_p99: Vec<String>,

    /// Also time runs of N rows (repeatable)
    #[arg(long, value_name = "N")]
    pub batch: Vec<usize>,

    /// Timed runs per batch size
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub runs: usize,

    /// Untimed runs first (the runtime's first calls allocate)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub warmup: usize,

    /// Threads one run may use (the server's model.intra_op_threads)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub intra_op_threads: usize,

    /// Workers the Deployment runs (the server's --workers), for its memory requests and limits
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub workers: usize,

    /// The memory budget of the Deployment's request for --workers workers: 512Mi, 1Gi
    #[arg(long, value_name = "QUANTITY")]
    pub max_memory: Option<String>,

    /// The largest PSI of the predictions against the reference's
    #[arg(long, value_name = "PSI", default_value_t = 0.1)]
    pub max_psi: f64,

    /// Run only these gates (repeatable) [default: every gate whose inputs are given]
    #[arg(long, value_enum, value_name = "GATE")]
    pub gate: Vec<GateArg>,

    /// Write the results on the registry version (MODEL must be a registry reference)
    #[arg(long)]
    pub record: bool,

    /// Registry directory for registry references [env: MODELSHIP_REGISTRY]
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,

    /// Path to ONNX Runtime's libonnxruntime.so (overrides ORT_DYLIB_PATH)
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    #[command(flatten)]
    pub convert: crate::cli::ConvertFlags,

    /// The report: a table for people, JSON for scripts, Markdown for a pull request comment
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    Classification,
    Regression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GateArg {
    Quality,
    Contract,
    Latency,
    Resources,
    Distribution,
}
