//! AWS Lambda: a SAM template for the modelship binary as a custom runtime's `bootstrap`, and
//! the Makefile that packages it.
//!
//! - `template.yaml`: the function (`provided.al2023`, one architecture, memory, timeout, the
//!   model's environment), its API event (`POST /predict`, `/v1/predict` and
//!   `/v2/models/{model}/infer` on a REST API, an HTTP API, or a function URL), `AutoPublishAlias`
//!   with provisioned concurrency on the alias, a `DeploymentPreference` (a CodeDeploy preset)
//!   whose alarms roll a new version back (Lambda errors, the function's own 5xx count, p99
//!   duration: the version's, not the alias's blend), and pre/post traffic hooks that invoke the
//!   new version (then the alias) with the check request and a bad one, and report to
//!   CodeDeploy. With the model in S3, the function may read only the model's prefix.
//! - `Makefile`: `make -f DIR/Makefile package` builds the bootstrap (`--features lambda`, for the
//!   architecture's Rust target), takes ONNX Runtime's library from the `onnxruntime` wheel for
//!   that platform, and lays out `DIR/package/` (bootstrap, library, model), the template's
//!   `CodeUri`; `sam deploy` uploads it.
//!
//! CloudFormation intrinsics are written in their long form (`{"Ref": ...}`, `{"Fn::Sub": ...}`,
//! `{"Fn::GetAtt": [...]}`): plain mappings, so the emitter's quoting holds and no YAML tag is needed.

use serde_yaml_ng::{Mapping, Value};

use crate::description::{ApiKind, Architecture, Deployment, HOOK_PREFIX, PackageKind};
use crate::{GeneratedFile, Provenance, yaml};

pub const TEMPLATE: &str = "template.yaml";
pub const MAKEFILE: &str = "Makefile";
/// The container image's Dockerfile (`lambda.package: image`), built in the package directory.
pub const DOCKERFILE: &str = "Dockerfile";
/// Where Lambda keeps a function's code, and the image's bootstrap, library and model.
pub const TASK_ROOT: &str = "/var/task";
/// The package directory, beside the template (its `CodeUri`).
pub const PACKAGE_DIR: &str = "package";
/// The hooks' code, run by Lambda's Python runtime (boto3 included).
const HOOK_CODE: &str = include_str!("lambda/hook.py");
const HOOK_RUNTIME: &str = "python3.12";
/// The function's own metrics (CloudWatch embedded metric format, written by the bootstrap).
pub const METRICS_NAMESPACE: &str = "modelship";

pub fn render(d: &Deployment, provenance: &Provenance) -> Vec<GeneratedFile> {
    let header = provenance.header();
    let mut files = vec![
        GeneratedFile { path: TEMPLATE, contents: format!("{header}{}", yaml::to_string(&template(d))) },
        GeneratedFile { path: MAKEFILE, contents: format!("{header}{}", makefile(d)) },
    ];
    if d.lambda.package == PackageKind::Image {
        files.push(GeneratedFile { path: DOCKERFILE, contents: dockerfile(d, &header) });
    }
    files
}

/// A mapping in the order given.
fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Value::String(k.to_owned()), v);
    }
    Value::Mapping(m)
}

fn s(text: impl Into<String>) -> Value {
    Value::String(text.into())
}

fn n(number: impl Into<u64>) -> Value {
    Value::Number(number.into().into())
}

fn list<const N: usize>(items: [Value; N]) -> Value {
    Value::Sequence(items.into())
}

fn reference(name: &str) -> Value {
    map([("Ref", s(name))])
}

fn sub(text: &str) -> Value {
    map([("Fn::Sub", s(text))])
}

fn get_att(resource: &str, attribute: &str) -> Value {
    map([("Fn::GetAtt", list([s(resource), s(attribute)]))])
}

fn template(d: &Deployment) -> Value {
    let l = &d.lambda;
    let mut resources = Mapping::new();
    resources.insert(s("Function"), function(d));
    if l.dead_letter_queue {
        // Asynchronous invocations that failed every retry, kept 14 days, encrypted at rest.
        resources.insert(
            s("DeadLetters"),
            map([("Type", s("AWS::SQS::Queue")), ("Properties", map([("MessageRetentionPeriod", n(1_209_600u32)), ("SqsManagedSseEnabled", Value::Bool(true))]))]),
        );
    }
    for (name, alarm) in alarms(d) {
        resources.insert(s(name), alarm);
    }
    resources.insert(s("PreTrafficHook"), hook(d, "pre-traffic", reference("Function.Version")));
    // Not `Ref: Function.Alias`: the alias's update policy names the hooks, so that would be a
    // circular dependency (cfn-lint with the SAM translator finds it); the name and the alias
    // make the same target.
    resources.insert(s("PostTrafficHook"), hook(d, "post-traffic", sub(&format!("${{Function}}:{}", d.lambda.alias))));
    let endpoint = match l.api {
        ApiKind::Rest => sub("https://${ServerlessRestApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/Prod/predict"),
        ApiKind::Http => sub("https://${ServerlessHttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/predict"),
        ApiKind::Url => get_att("FunctionUrl", "FunctionUrl"),
    };
    let mut outputs = Mapping::new();
    outputs.insert(s("Endpoint"), map([("Description", s("POST the seed's {\"features\": [[...]]} here")), ("Value", endpoint)]));
    outputs.insert(s("Alias"), map([("Description", s("The alias traffic goes to; CodeDeploy moves it")), ("Value", reference("Function.Alias"))]));
    if l.dead_letter_queue {
        outputs.insert(s("DeadLetterQueue"), map([("Description", s("Failed asynchronous invocations")), ("Value", reference("DeadLetters"))]));
    }
    map([
        ("AWSTemplateFormatVersion", s("2010-09-09")),
        ("Transform", s("AWS::Serverless-2016-10-31")),
        ("Description", s(format!("modelship serving {} on AWS Lambda (custom runtime, {})", d.served_name(), l.architecture.as_str()))),
        ("Resources", Value::Mapping(resources)),
        ("Outputs", Value::Mapping(outputs)),
    ])
}

fn function(d: &Deployment) -> Value {
    let l = &d.lambda;
    let mut variables = Mapping::new();
    variables.insert(s("MODEL_NAME"), s(d.served_name()));
    if let Some(version) = &d.model.version {
        variables.insert(s("MODEL_VERSION"), s(version.clone()));
    }
    variables.insert(s("LOG_FORMAT"), s("json"));
    if let Some(artifact) = &l.artifact {
        variables.insert(s("MODELSHIP_ARTIFACTS"), s(artifact.store.trim_end_matches('/')));
        variables.insert(s("MODELSHIP_MODEL_DIGEST"), s(artifact.digest.clone()));
    }
    for (k, v) in &d.env {
        variables.insert(s(k.clone()), s(v.clone()));
    }
    let mut properties = Mapping::new();
    let mut set = |k: &str, v: Value| {
        properties.insert(s(k), v);
    };
    set("Description", s(format!("modelship: {} behind the one request pipeline", d.served_name())));
    if l.package == PackageKind::Image {
        set("PackageType", s("Image"));
    } else {
        set("CodeUri", s(format!("{PACKAGE_DIR}/")));
        set("Handler", s("bootstrap"));
        set("Runtime", s("provided.al2023"));
    }
    set("Architectures", list([s(l.architecture.as_str())]));
    set("MemorySize", n(l.memory));
    set("Timeout", n(d.lambda_timeout_seconds()));
    set("Environment", map([("Variables", Value::Mapping(variables))]));
    if let Some((bucket, prefix)) = d.lambda_bucket_and_prefix() {
        // Only the model's prefix: the function reads artifacts by digest and lists nothing.
        let objects = if prefix.is_empty() { format!("{bucket}/sha256/*") } else { format!("{bucket}/{prefix}/sha256/*") };
        set(
            "Policies",
            list([map([(
                "Statement",
                list([map([
                    ("Effect", s("Allow")),
                    ("Action", list([s("s3:GetObject")])),
                    ("Resource", sub(&format!("arn:${{AWS::Partition}}:s3:::{objects}"))),
                ])]),
            )])]),
        );
    }
    set("AutoPublishAlias", s(l.alias.clone()));
    if l.provisioned_concurrency > 0 {
        set("ProvisionedConcurrencyConfig", map([("ProvisionedConcurrentExecutions", n(l.provisioned_concurrency))]));
    }
    if l.reserved_concurrency > 0 {
        set("ReservedConcurrentExecutions", n(l.reserved_concurrency));
    }
    if l.dead_letter_queue {
        // SAM grants the function sqs:SendMessage on it.
        set("DeadLetterQueue", map([("Type", s("SQS")), ("TargetArn", get_att("DeadLetters", "Arn"))]));
    }
    set(
        "DeploymentPreference",
        map([
            ("Type", s(l.deployment.clone())),
            ("Alarms", list([reference("ErrorsAlarm"), reference("ServerErrorsAlarm"), reference("LatencyAlarm")])),
            ("Hooks", map([("PreTraffic", reference("PreTrafficHook")), ("PostTraffic", reference("PostTrafficHook"))])),
        ]),
    );
    match l.api {
        ApiKind::Rest | ApiKind::Http => {
            let kind = if l.api == ApiKind::Rest { "Api" } else { "HttpApi" };
            let event = |path: &str| map([("Type", s(kind)), ("Properties", map([("Path", s(path)), ("Method", s("post"))]))]);
            set(
                "Events",
                map([("Predict", event("/predict")), ("PredictV1", event("/v1/predict")), ("InferV2", event("/v2/models/{model}/infer"))]),
            );
        }
        ApiKind::Url => set("FunctionUrlConfig", map([("AuthType", s("AWS_IAM"))])),
    }
    if l.package == PackageKind::Image {
        // `sam build` builds the image from the package directory and fills ImageUri.
        let metadata = map([("Dockerfile", s(DOCKERFILE)), ("DockerContext", s(format!("./{PACKAGE_DIR}"))), ("DockerTag", s(d.image.tag.clone()))]);
        return map([("Type", s("AWS::Serverless::Function")), ("Metadata", metadata), ("Properties", Value::Mapping(properties))]);
    }
    map([("Type", s("AWS::Serverless::Function")), ("Properties", Value::Mapping(properties))])
}

/// The container image: the package's bootstrap, library and model in `/var/task`, with only
/// the system libraries they link (what `ldd` lists), FROM scratch; the bootstrap is the
/// entrypoint and talks to the Runtime API as the zip's does.
fn dockerfile(d: &Deployment, header: &str) -> String {
    let lib = format!("libonnxruntime.so.{}", d.image.ort_version);
    let model = if d.model.file.is_some() { format!("COPY model.onnx /rootfs{TASK_ROOT}/model.onnx\n") } else { String::new() };
    format!(
        "{header}# The function's container image (lambda.package: image), built in the package directory:\n\
         #   make -f DIR/Makefile image   (or sam build, which reads this file from the template's Metadata)\n\
         ARG TOOLS_IMAGE={tools}\n\n\
         FROM ${{TOOLS_IMAGE}} AS rootfs\n\
         SHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]\n\
         COPY bootstrap {lib} /rootfs{TASK_ROOT}/\n\
         {model}\
         RUN set -eux; \\\n\
         \x20   mkdir -p /rootfs/tmp; \\\n\
         \x20   ldd /rootfs{TASK_ROOT}/bootstrap /rootfs{TASK_ROOT}/{lib} \\\n\
         \x20     | awk '$2 == \"=>\" && $3 ~ /^\\// {{print $3}} $1 ~ /^\\// && $1 !~ /:$/ {{print $1}}' \\\n\
         \x20     | sort -u | xargs -r -I{{}} cp --parents -L {{}} /rootfs; \\\n\
         \x20   chmod 1777 /rootfs/tmp\n\n\
         FROM scratch\n\
         COPY --from=rootfs /rootfs/ /\n\
         ENV LAMBDA_TASK_ROOT={TASK_ROOT}\n\
         WORKDIR {TASK_ROOT}\n\
         ENTRYPOINT [\"{TASK_ROOT}/bootstrap\"]\n",
        tools = d.image.bases.tools,
    )
}

/// The alarms CodeDeploy watches while it shifts traffic: any of them in ALARM rolls back.
/// Each judges the new version alone (`ExecutedVersion`, or the function's own `Version`
/// dimension), so the old version's traffic cannot hide it.
fn alarms(d: &Deployment) -> Vec<(&'static str, Value)> {
    let l = &d.lambda;
    let dimension = |name: &str, value: Value| map([("Name", s(name)), ("Value", value)]);
    let lambda_dimensions = || {
        list([
            dimension("FunctionName", reference("Function")),
            dimension("Resource", sub(&format!("${{Function}}:{}", l.alias))),
            dimension("ExecutedVersion", get_att("Function.Version", "Version")),
        ])
    };
    let alarm = |description: String, namespace: &str, metric: &str, statistic: (&str, &str), threshold: u32, dimensions: Value| {
        map([
            ("Type", s("AWS::CloudWatch::Alarm")),
            (
                "Properties",
                map([
                    ("AlarmDescription", s(description)),
                    ("Namespace", s(namespace)),
                    ("MetricName", s(metric)),
                    ("Dimensions", dimensions),
                    (statistic.0, s(statistic.1)),
                    ("Period", n(60u32)),
                    ("EvaluationPeriods", n(1u32)),
                    ("Threshold", n(threshold)),
                    ("ComparisonOperator", s("GreaterThanThreshold")),
                    // A version with no traffic yet has no data: that is not a failure.
                    ("TreatMissingData", s("notBreaching")),
                ]),
            ),
        ])
    };
    vec![
        (
            "ErrorsAlarm",
            alarm(
                format!("{}: the new version's Lambda errors (crashes, timeouts) in a minute", d.name),
                "AWS/Lambda",
                "Errors",
                ("Statistic", "Sum"),
                0,
                lambda_dimensions(),
            ),
        ),
        (
            "ServerErrorsAlarm",
            alarm(
                format!("{}: the new version's 5xx answers in a minute, above {} (4xx are the callers' mistakes and do not count)", d.name, l.alarms.server_errors),
                METRICS_NAMESPACE,
                "ServerErrors",
                ("Statistic", "Sum"),
                l.alarms.server_errors,
                list([dimension("FunctionName", reference("Function")), dimension("Version", get_att("Function.Version", "Version"))]),
            ),
        ),
        (
            "LatencyAlarm",
            alarm(
                format!("{}: the new version's p99 duration in a minute, above {} ms", d.name, l.alarms.latency_p99_ms),
                "AWS/Lambda",
                "Duration",
                ("ExtendedStatistic", "p99"),
                l.alarms.latency_p99_ms,
                lambda_dimensions(),
            ),
        ),
    ]
}

/// A traffic hook: invokes `target` (the new version before traffic moves, the alias after)
/// with the check request and a bad one, and tells CodeDeploy whether to go on.
fn hook(d: &Deployment, stage: &str, target: Value) -> Value {
    let l = &d.lambda;
    let features = l.check.as_ref().map_or_else(|| "[]".to_owned(), |c| c.features.to_string());
    let invoke_resource = if stage == "pre-traffic" {
        reference("Function.Version")
    } else {
        sub(&format!("arn:${{AWS::Partition}}:lambda:${{AWS::Region}}:${{AWS::AccountId}}:function:${{Function}}:{}", l.alias))
    };
    map([
        ("Type", s("AWS::Serverless::Function")),
        (
            "Properties",
            map([
                // SAM's CodeDeploy role may invoke hooks only under this prefix.
                ("FunctionName", s(format!("{HOOK_PREFIX}{}-{stage}", d.name))),
                ("Description", s(format!("modelship's {stage} check of {}: a prediction, a 4xx for a bad request, the latency budget", d.name))),
                ("Runtime", s(HOOK_RUNTIME)),
                ("Handler", s("index.handler")),
                ("InlineCode", s(HOOK_CODE)),
                ("Timeout", n(60u32)),
                ("MemorySize", n(128u32)),
                ("DeploymentPreference", map([("Enabled", Value::Bool(false))])),
                (
                    "Environment",
                    map([(
                        "Variables",
                        map([
                            ("HOOK", s(stage)),
                            ("TARGET", target),
                            ("CHECK_FEATURES", s(features)),
                            ("LATENCY_BUDGET_MS", s(l.alarms.latency_p99_ms.to_string())),
                        ]),
                    )]),
                ),
                (
                    "Policies",
                    list([map([(
                        "Statement",
                        list([
                            map([
                                ("Effect", s("Allow")),
                                ("Action", list([s("codedeploy:PutLifecycleEventHookExecutionStatus")])),
                                (
                                    "Resource",
                                    sub("arn:${AWS::Partition}:codedeploy:${AWS::Region}:${AWS::AccountId}:deploymentgroup:${ServerlessDeploymentApplication}/*"),
                                ),
                            ]),
                            map([("Effect", s("Allow")), ("Action", list([s("lambda:InvokeFunction")])), ("Resource", invoke_resource)]),
                        ]),
                    )])]),
                ),
            ]),
        ),
    ])
}

fn makefile(d: &Deployment) -> String {
    let arch = d.lambda.architecture;
    let image = d.lambda.package == PackageKind::Image;
    let strip = match arch {
        Architecture::X86_64 => "strip",
        Architecture::Arm64 => "aarch64-linux-gnu-strip",
    };
    let model = match &d.model.file {
        Some(file) => format!("MODEL ?= $(HERE){file}\n"),
        None => String::new(),
    };
    let copy_model = if d.model.file.is_some() {
        "\tcp $(MODEL) $(PACKAGE)/model.onnx\n"
    } else {
        "\t@echo \"the model is fetched from S3 at cold start (MODELSHIP_ARTIFACTS, MODELSHIP_MODEL_DIGEST): nothing to package\"\n"
    };
    format!(
        "# The function's package for {arch}: the bootstrap (modelship built with the `lambda` feature),\n\
         # ONNX Runtime's library from the onnxruntime wheel, and the model. From the modelship repository:\n\
         #   make -f {out}/Makefile package\n\
         #   sam deploy --template-file {out}/template.yaml --stack-name {name} --capabilities CAPABILITY_IAM --resolve-s3\n\
         # BOOTSTRAP=path/to/modelship packages a binary built elsewhere (it must have the lambda feature);\n\
         # without it, cargo builds one (incrementally) every time.\n\
         HERE := $(dir $(lastword $(MAKEFILE_LIST)))\n\
         TARGET := {target}\n\
         ORT_VERSION := {ort}\n\
         ORT_PLATFORM := {platform}\n\
         CARGO_TARGET_DIR ?= target\n\
         ifndef BOOTSTRAP\n\
         BOOTSTRAP := $(CARGO_TARGET_DIR)/$(TARGET)/release/modelship\n\
         BUILD := bootstrap\n\
         endif\n\
         ORT_DIR ?= $(HERE).ort-$(ORT_PLATFORM)\n\
         ORT_LIB ?= $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)\n\
         STRIP ?= {strip}\n\
         {model}\
         PACKAGE := $(HERE){package}\n\
         \n\
         .PHONY: package bootstrap{image_phony}\n\
         package: $(BUILD) $(ORT_LIB)\n\
         \trm -rf $(PACKAGE)\n\
         \tmkdir -p $(PACKAGE)\n\
         \tcp $(BOOTSTRAP) $(PACKAGE)/bootstrap\n\
         \t$(STRIP) --strip-all $(PACKAGE)/bootstrap\n\
         \tcp $(ORT_LIB) $(PACKAGE)/libonnxruntime.so.$(ORT_VERSION)\n\
         {copy_model}\
         {image_target}\
         \n\
         bootstrap:\n\
         \tcargo build --release --locked -p modelship --no-default-features --features lambda --target $(TARGET) --target-dir $(CARGO_TARGET_DIR)\n\
         \n\
         $(ORT_LIB):\n\
         \tpython3 -m pip download --quiet --no-deps --only-binary=:all: --platform $(ORT_PLATFORM) --python-version 3.11 onnxruntime==$(ORT_VERSION) -d $(ORT_DIR)\n\
         \tunzip -o -j -q $(ORT_DIR)/onnxruntime-$(ORT_VERSION)-*.whl 'onnxruntime/capi/libonnxruntime.so.*' -d $(ORT_DIR)\n",
        arch = arch.as_str(),
        out = "DIR",
        name = d.name,
        target = arch.rust_target(),
        ort = d.image.ort_version,
        platform = arch.wheel_platform(),
        package = PACKAGE_DIR,
        image_phony = if image { " image" } else { "" },
        image_target = if image {
            format!(
                "\tcp $(HERE){DOCKERFILE} $(PACKAGE)/{DOCKERFILE}\n\n\
                 # The container image, tagged IMAGE (default {name}:{tag}); TOOLS_IMAGE=... names a\n\
                 # Debian-like base with bash and ldd when debian:bookworm-slim cannot be pulled.\n\
                 # Then: sam build --template-file DIR/template.yaml, and sam deploy --resolve-image-repos\n\
                 # (or --image-repository) --capabilities CAPABILITY_IAM.\n\
                 IMAGE ?= {name}:{tag}\n\
                 image: package\n\
                 \tdocker build --platform {platform} -t $(IMAGE) $(if $(TOOLS_IMAGE),--build-arg TOOLS_IMAGE=$(TOOLS_IMAGE)) $(PACKAGE)\n",
                name = d.name,
                tag = d.image.tag,
                platform = match arch {
                    Architecture::X86_64 => "linux/amd64",
                    Architecture::Arm64 => "linux/arm64",
                },
            )
        } else {
            String::new()
        },
    )
}
