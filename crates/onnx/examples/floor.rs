//! In-process inference time through modelship's own ONNX backend: the floor under any server's
//! latency. Runs single-row requests on one session and prints percentiles as one JSON line.
//!
//!   cargo run --release -p modelship-onnx --example floor -- MODEL.onnx [RUNS]

use std::time::Instant;

use modelship_inference::{Backend, DataType, LoadOptions, PreparedRequest, Tensor, TensorData};
use modelship_onnx::OnnxBackend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: floor MODEL.onnx [RUNS]")?;
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(20_000);
    let backend = OnnxBackend::new(None)?;
    let mut session = backend.load(&std::fs::read(&path)?, &LoadOptions::default())?;
    let input = session.info().signature.inputs.first().ok_or("model has no input")?.clone();
    if input.datatype != DataType::Fp32 || input.shape.len() != 2 || input.shape[1] < 1 {
        return Err(format!("floor needs an FP32 [N, F] input, not {:?}", input).into());
    }
    let width = input.shape[1] as usize;
    let row: Vec<f32> = (0..width).map(|i| ((i % 17) as f32 - 8.0) / 4.0).collect();
    let request = PreparedRequest {
        inputs: vec![Tensor::new(input.name.clone(), vec![1, width], TensorData::Fp32(row))?],
        outputs: (0..session.info().signature.outputs.len()).collect(),
    };
    for _ in 0..runs / 10 {
        session.run(&request)?;
    }
    let mut micros = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        session.run(&request)?;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    let pct = |p: f64| micros[((micros.len() - 1) as f64 * p) as usize];
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    println!(
        r#"{{"model":"{path}","runs":{runs},"p50_us":{:.2},"p99_us":{:.2},"mean_us":{mean:.2}}}"#,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
