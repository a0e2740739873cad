//! The image: a multi-stage `Dockerfile` whose final stage is `FROM scratch` holding the
//! `modelship` binary, ONNX Runtime's shared library and only the system libraries the two link
//! (found by `ldd` in a tools stage), a passwd entry for the non-root user, and nothing else: no
//! shell, no package manager, no curl (the health check is `modelship healthcheck`).
//!
//! Two ways in (`image.build`):
//! - `binary`: the build context is the output directory, where `modelship deploy docker
//!   --apply` stages the binary (`modelship`), its library (`lib/libonnxruntime.so`) and a baked
//!   model (`model/`); `.dockerignore` lets nothing else in, so no stray file or secret can enter.
//! - `source`: the context is the repository; a Rust stage compiles the binary and a Python stage
//!   takes the library out of the `onnxruntime` wheel.
//!
//! Base images are build arguments with public defaults (`--build-arg TOOLS_IMAGE=...`), so a
//! machine that cannot pull builds from bases of its own. The GPU variant (`Dockerfile.gpu`)
//! ends on a CUDA runtime image instead, with `onnxruntime-gpu`'s libraries.

use crate::description::{BINARY, Build, Delivery, Deployment, MODEL_DIR, STATE_DIR, UID};
use crate::{GeneratedFile, Provenance};

pub const DOCKERFILE: &str = "Dockerfile";
pub const GPU_DOCKERFILE: &str = "Dockerfile.gpu";
pub const DOCKERIGNORE: &str = ".dockerignore";
/// Where `image.build: binary` expects its inputs, in the build context.
pub const STAGED_BINARY: &str = "modelship";
pub const STAGED_LIBRARY: &str = "lib/libonnxruntime.so";
pub const STAGED_MODEL_DIR: &str = "model";
/// ONNX Runtime's library in the image (beside the binary's `../lib`, where the server looks).
const LIBRARY: &str = "/usr/local/lib/libonnxruntime.so";

/// The tag an image is built and run under: the description's tag and the first 12 hex digits of
/// a digest over what goes into the image (`0.1.0-3f2a9c01d4e7`), so an image built from an
/// older description or binary is never taken for this one. `inputs` are (name, digest) pairs
/// of the build context (the Dockerfile, the staged binary, library and model), in any order.
pub fn content_tag(tag: &str, inputs: &[(&str, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&(&str, String)> = inputs.iter().collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    for (name, digest) in sorted {
        hasher.update(format!("{name}\0{digest}\n"));
    }
    let short = &hex::encode(hasher.finalize())[..12];
    // A tag is at most 128 characters.
    let keep = tag.len().min(128 - short.len() - 1);
    format!("{}-{short}", &tag[..keep])
}

pub fn render(d: &Deployment, provenance: &Provenance) -> Vec<GeneratedFile> {
    let header = provenance.header();
    let mut files = vec![
        GeneratedFile { path: DOCKERFILE, contents: format!("{header}{}", dockerfile(d, false)) },
        GeneratedFile { path: DOCKERIGNORE, contents: format!("{header}{}", dockerignore(d)) },
    ];
    if d.image.gpu {
        files.push(GeneratedFile { path: GPU_DOCKERFILE, contents: format!("{header}{}", dockerfile(d, true)) });
    }
    files
}

fn dockerignore(d: &Deployment) -> String {
    match d.image.build {
        // An allow-list: only what the Dockerfile copies.
        Build::Binary => format!(
            "# The context is this directory; only the staged inputs enter it.\n*\n!{STAGED_BINARY}\n!{STAGED_LIBRARY}\n!{STAGED_MODEL_DIR}/\n"
        ),
        // Read from the repository root with BuildKit (`Dockerfile.dockerignore` beside the
        // Dockerfile) or copied there: build outputs, environments and key material stay out.
        Build::Source => "# For `docker build -f DIR/Dockerfile .` from the repository root.\n\
                          target/\n.git/\n.venv/\n.cache/\n**/*.pem\n**/*.key\n**/.env\n**/admin-token\n"
            .to_owned(),
    }
}

/// A JSON array, as the exec form of `CMD`, `ENTRYPOINT`, `HEALTHCHECK` and `SHELL` wants.
fn exec_form(parts: &[&str]) -> String {
    serde_json::to_string(parts).expect("strings serialize")
}

fn dockerfile(d: &Deployment, gpu: bool) -> String {
    let img = &d.image;
    let mut out = String::new();
    let push = |out: &mut String, s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    let bake = d.model.delivery() == Delivery::Bake && d.model.file.is_some();
    let model_file = d.model_file_name().unwrap_or("model.onnx");
    let wheel = if gpu { "onnxruntime-gpu" } else { "onnxruntime" };

    push(&mut out, &format!("# Image for the `{}` deployment{}: build with", d.name, if gpu { " (GPU: ONNX Runtime's CUDA build)" } else { "" }));
    match img.build {
        Build::Binary => push(
            &mut out,
            &format!("#   modelship deploy docker --apply   (stages {STAGED_BINARY}, {STAGED_LIBRARY}{} here; tags {})", if bake { ", model/" } else { "" }, if gpu { img.gpu_reference() } else { img.reference() }),
        ),
        Build::Source => push(&mut out, &format!("#   docker build -f {}{} -t {} .   (from the repository root)", "DIR/", if gpu { GPU_DOCKERFILE } else { DOCKERFILE }, if gpu { img.gpu_reference() } else { img.reference() })),
    }
    push(&mut out, "# Every base image is a build argument: --build-arg TOOLS_IMAGE=... where the defaults cannot be pulled.");
    push(&mut out, &format!("ARG TOOLS_IMAGE={}", img.bases.tools));
    if img.build == Build::Source {
        push(&mut out, &format!("ARG RUST_IMAGE={}", img.bases.rust));
    }
    if img.build == Build::Source || gpu {
        push(&mut out, &format!("ARG PYTHON_IMAGE={}", img.bases.python));
    }
    if gpu {
        push(&mut out, &format!("ARG CUDA_IMAGE={}", img.bases.cuda));
    }
    out.push('\n');

    if img.build == Build::Source {
        push(&mut out, "# The binary, compiled from this repository with its lock file.");
        push(&mut out, "FROM ${RUST_IMAGE} AS build");
        push(&mut out, "WORKDIR /src");
        push(&mut out, "COPY . .");
        let features = d.features();
        if features.is_empty() {
            push(&mut out, "RUN cargo build --release --locked -p modelship \\");
        } else {
            push(&mut out, &format!("RUN cargo build --release --locked -p modelship --features {} \\", features.join(",")));
        }
        push(&mut out, "    && install -D --strip target/release/modelship /out/modelship");
        out.push('\n');
    }
    if img.build == Build::Source || gpu {
        push(&mut out, &format!("# ONNX Runtime's shared library{}, out of the `{wheel}` wheel from PyPI (no other file of it).", if gpu { " and its CUDA provider" } else { "" }));
        push(&mut out, "FROM ${PYTHON_IMAGE} AS ort");
        push(&mut out, &format!("ARG ORT_VERSION={}", img.ort_version));
        push(&mut out, &format!("RUN pip download --no-cache-dir --no-deps --only-binary=:all: --dest /wheels \"{wheel}==${{ORT_VERSION}}\" \\"));
        push(&mut out, "    && python -m zipfile -e /wheels/onnxruntime*.whl /ort \\");
        push(&mut out, "    && mkdir -p /out/lib \\");
        if gpu {
            push(&mut out, "    && cp /ort/onnxruntime/capi/libonnxruntime_providers_*.so /out/lib/ \\");
        }
        push(&mut out, "    && cp /ort/onnxruntime/capi/libonnxruntime.so.* /out/lib/libonnxruntime.so");
        out.push('\n');
    }

    push(&mut out, "# The final root filesystem: the binary, the library, what `ldd` says they link, a user.");
    push(&mut out, "FROM ${TOOLS_IMAGE} AS rootfs");
    push(&mut out, &exec_form_line("SHELL", &["/bin/bash", "-o", "pipefail", "-c"]));
    match img.build {
        Build::Binary => push(&mut out, &format!("COPY {STAGED_BINARY} /rootfs{BINARY}")),
        Build::Source => push(&mut out, &format!("COPY --from=build /out/modelship /rootfs{BINARY}")),
    }
    if gpu {
        push(&mut out, "COPY --from=ort /out/lib/ /rootfs/usr/local/lib/");
    } else {
        match img.build {
            Build::Binary => push(&mut out, &format!("COPY {STAGED_LIBRARY} /rootfs{LIBRARY}")),
            Build::Source => push(&mut out, &format!("COPY --from=ort /out/lib/libonnxruntime.so /rootfs{LIBRARY}")),
        }
    }
    if bake {
        let source = match img.build {
            Build::Binary => format!("{STAGED_MODEL_DIR}/{model_file}"),
            Build::Source => d.model.file.clone().unwrap_or_default(),
        };
        push(&mut out, &format!("COPY {source} /rootfs{MODEL_DIR}/{model_file}"));
    }
    // The CUDA base brings its own C and C++ libraries: only the scratch image needs them copied.
    push(&mut out, "RUN set -eux; \\");
    push(&mut out, &format!("    mkdir -p /rootfs/etc /rootfs/tmp /rootfs{STATE_DIR} /rootfs{MODEL_DIR}; \\"));
    if !gpu {
        push(&mut out, &format!("    ldd /rootfs{BINARY} /rootfs/usr/local/lib/libonnxruntime.so \\"));
        push(&mut out, "      | awk '$2 == \"=>\" && $3 ~ /^\\// {print $3} $1 ~ /^\\// && $1 !~ /:$/ {print $1}' \\");
        push(&mut out, "      | sort -u | xargs -r -I{} cp --parents -L {} /rootfs; \\");
    }
    push(&mut out, &format!("    echo 'modelship:x:{UID}:{UID}:modelship:{STATE_DIR}:/sbin/nologin' > /rootfs/etc/passwd; \\"));
    push(&mut out, &format!("    echo 'modelship:x:{UID}:' > /rootfs/etc/group; \\"));
    push(&mut out, &format!("    chown -R {UID}:{UID} /rootfs{STATE_DIR}; \\"));
    push(&mut out, "    chmod 1777 /rootfs/tmp");
    out.push('\n');

    if gpu {
        push(&mut out, "# CUDA and cuDNN come from the base; the rest is the rootfs stage's.");
        push(&mut out, "FROM ${CUDA_IMAGE}");
        push(&mut out, "COPY --from=rootfs /rootfs/usr/local/ /usr/local/");
        push(&mut out, &format!("COPY --from=rootfs --chown={UID}:{UID} /rootfs{STATE_DIR}/ {STATE_DIR}/"));
        push(&mut out, &format!("COPY --from=rootfs /rootfs{MODEL_DIR}/ {MODEL_DIR}/"));
        push(&mut out, &format!("RUN echo 'modelship:x:{UID}:{UID}:modelship:{STATE_DIR}:/sbin/nologin' >> /etc/passwd \\"));
        push(&mut out, &format!("    && echo 'modelship:x:{UID}:' >> /etc/group"));
    } else {
        push(&mut out, "# Nothing but the binary, its libraries and its user.");
        push(&mut out, "FROM scratch");
        push(&mut out, "COPY --from=rootfs /rootfs/ /");
    }
    push(&mut out, &format!("LABEL org.opencontainers.image.title=\"modelship\" org.opencontainers.image.description={}", serde_json::to_string(&format!("{} serving {}", d.name, d.served_name())).expect("string")));
    let mut env = vec![
        format!("MODEL_PATH={}", d.model_path()),
        format!("MODELSHIP_STATE_DIR={STATE_DIR}"),
        format!("HOME={STATE_DIR}"),
        format!("ORT_DYLIB_PATH={LIBRARY}"),
        // `docker exec CONTAINER modelship traffic status` finds the admin API it runs beside.
        format!("MODELSHIP_ADMIN_URL={}", d.admin_url()),
    ];
    if d.config.is_some() {
        env.insert(1, format!("CONFIG_PATH={}", crate::description::CONFIG_PATH));
    }
    if gpu {
        // The GPU when the container is given one (`docker run --gpus all`), else the CPU, logged;
        // the orchestrated deployments that reserve a GPU set MODELSHIP_DEVICE=cuda.
        env.push("MODELSHIP_DEVICE=auto".to_owned());
        env.push("NVIDIA_VISIBLE_DEVICES=all".to_owned());
        env.push("NVIDIA_DRIVER_CAPABILITIES=compute,utility".to_owned());
    }
    push(&mut out, &format!("ENV {}", env.iter().map(|e| env_assignment(e)).collect::<Vec<_>>().join(" \\\n    ")));
    push(&mut out, &format!("USER {UID}:{UID}"));
    push(&mut out, &format!("WORKDIR {STATE_DIR}"));
    let p = &d.ports;
    push(&mut out, "# HTTP, gRPC, and the admin API (on the container's loopback unless the server runs with --admin-host).");
    push(&mut out, &format!("EXPOSE {} {} {}", p.http, p.grpc, p.admin));
    let h = &d.healthcheck;
    let port = p.http.to_string();
    push(
        &mut out,
        &format!(
            "HEALTHCHECK --interval={} --timeout={} --start-period={} --retries={} \\\n  CMD {}",
            crate::compose_file::dur(&h.interval),
            crate::compose_file::dur(&h.timeout),
            crate::compose_file::dur(&h.start_period),
            h.retries,
            exec_form(&[BINARY, "healthcheck", "--port", &port])
        ),
    );
    push(&mut out, "STOPSIGNAL SIGTERM");
    push(&mut out, &exec_form_line("ENTRYPOINT", &[BINARY]));
    let command = crate::compose_file::command(d);
    push(&mut out, &exec_form_line("CMD", &command.iter().map(String::as_str).collect::<Vec<_>>()));
    out
}

fn exec_form_line(instruction: &str, parts: &[&str]) -> String {
    format!("{instruction} {}", exec_form(parts))
}

/// `KEY=value`, the value quoted when it holds anything but plain characters.
fn env_assignment(assignment: &str) -> String {
    let (key, value) = assignment.split_once('=').unwrap_or((assignment, ""));
    if value.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:@,".contains(c)) && !value.is_empty() {
        format!("{key}={value}")
    } else {
        format!("{key}={}", serde_json::to_string(value).expect("string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_tag_changes_with_any_input_and_only_then() {
        let inputs = [("Dockerfile", "sha256:aa".to_owned()), ("modelship", "sha256:bb".to_owned())];
        let tag = content_tag("0.1.0", &inputs);
        assert!(tag.starts_with("0.1.0-") && tag.len() == "0.1.0-".len() + 12, "{tag}");
        assert_eq!(content_tag("0.1.0", &[inputs[1].clone(), inputs[0].clone()]), tag, "the order of the inputs does not matter");
        assert_ne!(content_tag("0.1.0", &[inputs[0].clone(), ("modelship", "sha256:bc".to_owned())]), tag, "a new binary");
        assert_ne!(content_tag("0.1.0", &[inputs[0].clone()]), tag, "an input less");
        assert_eq!(content_tag(&"x".repeat(128), &inputs).len(), 128, "still a valid tag");
    }
}
