//! Command-line arguments, parsed low: every value optional, checked later by `config::resolve`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "modelship",
    version,
    about = "Serve, version and safely roll out ONNX models",
    long_about = "modelship takes a trained ONNX model to production: one binary serves it over the \
                  Open Inference Protocol V2 and the simple /v1/predict API, with probes, Prometheus \
                  metrics, JSON logs and graceful drain.",
    after_help = "Examples:\n  modelship serve examples/models/fraud.onnx\n  modelship serve --config serving.yaml --port 9000\n\nRun `modelship serve --help` for every serving option."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over HTTP (Open Inference Protocol V2 and /v1/predict)
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
}

const SERVE_HELP: &str = "\
Configuration comes from, lowest precedence first: built-in defaults, the config file \
(--config or CONFIG_PATH), environment variables (MODEL_PATH, MODEL_NAME, MODEL_VERSION, \
LOG_LEVEL, LOG_FORMAT, ORT_DYLIB_PATH), then these flags.

The config file is the seed's serving.yaml:
  model:    {name: fraud-detection, version: v1.2.0, path: /models/model.onnx}
  server:   {host: 0.0.0.0, port: 8000, workers: 4}
  logging:  {level: INFO, format: json}

Once the model is loaded and the port bound, one JSON line goes to standard output:
  {\"event\":\"ready\",\"http\":\"127.0.0.1:8000\",...}
Logs go to standard error. SIGTERM or SIGINT drains in-flight requests and exits 0.

Examples:
  modelship serve model.onnx                       # port 8000, name from the file
  modelship serve model.onnx --port 0              # any free port; read it from the ready line
  modelship serve --config serving.yaml --workers 2
  MODEL_PATH=/models/model.onnx modelship serve";

#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// The ONNX model file to serve (overrides model.path and MODEL_PATH)
    #[arg(value_name = "MODEL.onnx")]
    pub model: Option<PathBuf>,

    /// Config file in the seed's serving.yaml shape (default: CONFIG_PATH when set)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Model name in URLs and metrics [default: the file name without .onnx]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Model version reported in responses [default: 1]
    #[arg(long = "model-version", value_name = "VERSION")]
    pub model_version: Option<String>,

    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,

    /// HTTP port; 0 picks a free port [default: 8000]
    #[arg(long, short = 'p', value_name = "PORT")]
    pub port: Option<u16>,

    /// Inference workers, each with its own model session [default: number of CPUs]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Threads one inference may use; raise it for large networks [default: 1]
    #[arg(long, value_name = "N")]
    pub intra_op_threads: Option<usize>,

    /// Requests that may wait for a worker before new ones get 429 [default: 128]
    #[arg(long, value_name = "N")]
    pub max_queue: Option<usize>,

    /// Largest accepted request body in bytes [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Seconds in-flight requests get to finish after SIGTERM [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_grace: Option<f64>,

    /// Seconds to keep accepting after SIGTERM while readiness reports 503 [default: 0]
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_delay: Option<f64>,

    /// Log level: error, warn, info, debug or trace [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    /// Path to ONNX Runtime's libonnxruntime.so (overrides ORT_DYLIB_PATH)
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Text,
}
