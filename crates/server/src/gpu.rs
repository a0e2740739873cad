//! The GPUs' own figures, read through NVML (the NVIDIA driver's management library,
//! `libnvidia-ml.so.1`, loaded at run time by `nvml-wrapper`) at each scrape: utilisation and
//! memory per card. On a machine without the driver nothing is loaded and no series is written.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use prometheus::{IntGaugeVec, Opts, Registry};

/// The driver's library, loaded once per process; `None` where there is none (no NVIDIA
/// driver: a CPU machine, or a container started without the GPU).
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(nvml) => Some(nvml),
        Err(e) => {
            tracing::debug!(error = %e, "NVML is not available: no GPU metrics");
            None
        }
    })
    .as_ref()
}

/// The per-card gauges (`gpu` is NVML's index, which is the CUDA ordinal when
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID` and no `CUDA_VISIBLE_DEVICES` reorders the cards; `name` the card's).
pub struct GpuMetrics {
    utilization: IntGaugeVec,
    memory_utilization: IntGaugeVec,
    memory_used: IntGaugeVec,
    memory_total: IntGaugeVec,
}

impl GpuMetrics {
    pub fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let m = IntGaugeVec::new(Opts::new(name, help), &["gpu", "name"]).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        GpuMetrics {
            utilization: gauge("modelship_gpu_utilization_percent", "Share of the last sample period in which a kernel ran on the GPU, in percent (NVML)"),
            memory_utilization: gauge("modelship_gpu_memory_utilization_percent", "Share of the last sample period in which the GPU's memory was read or written, in percent (NVML)"),
            memory_used: gauge("modelship_gpu_memory_used_bytes", "GPU memory allocated, by every process on the card (NVML)"),
            memory_total: gauge("modelship_gpu_memory_total_bytes", "GPU memory installed (NVML)"),
        }
    }

    /// Reads every card now. Without NVML, does nothing; a card that fails to answer is left out
    /// of this scrape.
    pub fn refresh(&self) {
        let Some(nvml) = nvml() else { return };
        let count = nvml.device_count().unwrap_or(0);
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else { continue };
            let name = device.name().unwrap_or_default();
            let labels = [index.to_string(), name];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            if let Ok(u) = device.utilization_rates() {
                self.utilization.with_label_values(&labels).set(i64::from(u.gpu));
                self.memory_utilization.with_label_values(&labels).set(i64::from(u.memory));
            }
            if let Ok(m) = device.memory_info() {
                self.memory_used.with_label_values(&labels).set(i64::try_from(m.used).unwrap_or(i64::MAX));
                self.memory_total.with_label_values(&labels).set(i64::try_from(m.total).unwrap_or(i64::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the driver's library (this machine, CI) a scrape has no GPU series and nothing
    /// fails; with it, every card answers.
    #[test]
    fn a_machine_without_the_driver_scrapes_cleanly() {
        let registry = Registry::new();
        let gpus = GpuMetrics::new(&registry);
        gpus.refresh();
        let families = registry.gather();
        match nvml() {
            None => assert!(families.iter().all(|f| f.get_metric().is_empty()), "{families:?}"),
            Some(nvml) => {
                let cards = nvml.device_count().unwrap() as usize;
                let total = families.iter().find(|f| f.name() == "modelship_gpu_memory_total_bytes").unwrap();
                assert_eq!(total.get_metric().len(), cards);
            }
        }
    }
}
