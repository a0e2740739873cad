//! `modelship healthcheck`: the image's own probe. Asks the server's readiness on loopback and
//! exits 0 or 1, so a container needs neither curl nor a shell to be health-checked.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::HealthcheckArgs;

pub fn main(args: &HealthcheckArgs) -> ExitCode {
    let host = if args.host.contains(':') && !args.host.starts_with('[') { format!("[{}]", args.host) } else { args.host.clone() };
    let url = format!("http://{host}:{}{}", args.port, args.path);
    let timeout = Duration::try_from_secs_f64(args.timeout).unwrap_or(Duration::from_secs(2));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into();
    match agent.get(&url).call() {
        Ok(response) if response.status() == 200 => ExitCode::SUCCESS,
        Ok(mut response) => {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            eprintln!("not ready: {url} answered {}: {}", response.status(), body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("not ready: {url}: {e} (is the server running on port {}? pass --port)", args.port);
            ExitCode::FAILURE
        }
    }
}
