//! How requests reach the pods: the Services, the Ingress, and per strategy the Istio
//! VirtualService and DestinationRule or the Gateway API HTTPRoute.

use std::collections::BTreeMap;

use super::api::*;
use super::{Files, TRACK, app_selector, meta, track_selector};
use crate::description::{Deployment, KubeStrategy, Mesh, bp};

/// Whole split of basis points.
const TOTAL_BP: u32 = 10_000;

fn meshed(d: &Deployment, mesh: Mesh) -> bool {
    matches!(d.kubernetes.strategy, KubeStrategy::Canary | KubeStrategy::Shadow) && d.kubernetes.mesh == mesh
}

fn service(d: &Deployment, name: &str, selector: Labels) -> Object<Spec<ServiceSpec>> {
    let p = &d.ports;
    Object {
        api_version: "v1",
        kind: "Service",
        metadata: meta(d, name),
        body: Spec {
            spec: ServiceSpec {
                kind: "ClusterIP",
                selector,
                ports: vec![
                    ServicePort { name: "http", port: p.http, target_port: "http", protocol: "TCP", app_protocol: "http" },
                    ServicePort { name: "grpc", port: p.grpc, target_port: "grpc", protocol: "TCP", app_protocol: "grpc" },
                ],
            },
        },
    }
}

/// `NAME` is what clients and the Ingress call. Blue-green: it selects the active colour and
/// `NAME-preview` the other. Gateway API: a Service per track, because its weights split
/// between Services; `NAME` is stable's. Istio and the rest: `NAME` selects every pod (Istio's
/// subsets split them).
pub fn services(d: &Deployment) -> Vec<(&'static str, Object<Spec<ServiceSpec>>)> {
    let k = &d.kubernetes;
    if k.strategy == KubeStrategy::BlueGreen {
        let active = k.blue_green.active;
        return vec![
            ("service.yaml", service(d, &d.name, track_selector(d, active.name()))),
            ("service-preview.yaml", service(d, &format!("{}-preview", d.name), track_selector(d, active.other().name()))),
        ];
    }
    if meshed(d, Mesh::GatewayApi) {
        return vec![
            ("service.yaml", service(d, &d.name, track_selector(d, "stable"))),
            ("service-canary.yaml", service(d, &format!("{}-canary", d.name), track_selector(d, "canary"))),
        ];
    }
    vec![("service.yaml", service(d, &d.name, app_selector(d)))]
}

fn fqdn(d: &Deployment) -> String {
    format!("{}.{}.svc.cluster.local", d.name, d.namespace())
}

/// nginx in front of the `NAME` Service, TLS terminated there. With Istio, nginx sends to the
/// Service's address with its in-cluster host name, so that the controller's sidecar applies the
/// VirtualService (nginx itself would pick pods and bypass the split).
pub fn ingress(d: &Deployment) -> Option<Object<Spec<IngressSpec>>> {
    let i = d.kubernetes.ingress.as_ref()?;
    if meshed(d, Mesh::GatewayApi) {
        return None;
    }
    let mut metadata = meta(d, &d.name);
    let nginx = |k: &str, v: &str| (format!("nginx.ingress.kubernetes.io/{k}"), v.to_owned());
    metadata.annotations = BTreeMap::from([
        nginx("ssl-redirect", "true"),
        nginx("backend-protocol", "HTTP"),
        // The server's own body limit (server.max_body_bytes) is 16 MiB.
        nginx("proxy-body-size", "16m"),
        nginx("proxy-read-timeout", "60"),
    ]);
    if meshed(d, Mesh::Istio) {
        metadata.annotations.extend([nginx("service-upstream", "true"), nginx("upstream-vhost", &fqdn(d))]);
    }
    Some(Object {
        api_version: "networking.k8s.io/v1",
        kind: "Ingress",
        metadata,
        body: Spec {
            spec: IngressSpec {
                ingress_class_name: i.class.clone(),
                tls: vec![IngressTls { hosts: vec![i.host.clone()], secret_name: i.tls_secret.clone().unwrap_or_else(|| format!("{}-tls", d.name)) }],
                rules: vec![IngressRule {
                    host: i.host.clone(),
                    http: IngressHttp {
                        paths: vec![IngressPath {
                            path: "/",
                            path_type: "Prefix",
                            backend: IngressBackend { service: IngressService { name: d.name.clone(), port: NamedPort { name: "http" } } },
                        }],
                    },
                }],
            },
        },
    })
}

/// The mesh's objects, for canary and shadow.
pub fn routes(d: &Deployment, files: &mut Files) {
    if meshed(d, Mesh::Istio) {
        files.add("destinationrule.yaml", &destination_rule(d));
        files.add("virtualservice.yaml", &virtual_service(d));
    } else if meshed(d, Mesh::GatewayApi) {
        files.add("httproute.yaml", &http_route(d));
    }
}

fn destination_rule(d: &Deployment) -> Object<Spec<DestinationRuleSpec>> {
    let subset = |name: &'static str| Subset { name, labels: BTreeMap::from([(TRACK.to_owned(), name.to_owned())]) };
    Object {
        api_version: "networking.istio.io/v1",
        kind: "DestinationRule",
        metadata: meta(d, &d.name),
        body: Spec { spec: DestinationRuleSpec { host: fqdn(d), subsets: vec![subset("stable"), subset("canary")] } },
    }
}

fn virtual_service(d: &Deployment) -> Object<Spec<VirtualServiceSpec>> {
    let t = &d.kubernetes.traffic;
    let to = |subset, weight| IstioDestinationWeight { destination: IstioDestination { host: fqdn(d), subset }, weight };
    let http = match d.kubernetes.strategy {
        KubeStrategy::Shadow => vec![IstioRoute {
            name: "shadow",
            matches: Vec::new(),
            route: vec![to("stable", 100)],
            mirror: Some(IstioDestination { host: fqdn(d), subset: "canary" }),
            mirror_percentage: Some(IstioPercent { value: f64::from(bp(&t.mirror)) / 100.0 }),
        }],
        _ => {
            // Validation keeps an Istio weight to whole percents.
            let percent = bp(&t.weight) / 100;
            vec![
                IstioRoute {
                    name: "canary-header",
                    matches: vec![IstioMatch { headers: BTreeMap::from([(t.header.name.clone(), IstioStringMatch { exact: t.header.value.clone() })]) }],
                    route: vec![to("canary", 100)],
                    mirror: None,
                    mirror_percentage: None,
                },
                IstioRoute { name: "weighted", matches: Vec::new(), route: vec![to("stable", 100 - percent), to("canary", percent)], mirror: None, mirror_percentage: None },
            ]
        }
    };
    Object {
        api_version: "networking.istio.io/v1",
        kind: "VirtualService",
        metadata: meta(d, &d.name),
        body: Spec { spec: VirtualServiceSpec { hosts: vec![fqdn(d)], http } },
    }
}

fn http_route(d: &Deployment) -> Object<Spec<HttpRouteSpec>> {
    let k = &d.kubernetes;
    let t = &k.traffic;
    let port = d.ports.http;
    let stable = d.name.clone();
    let canary = format!("{}-canary", d.name);
    let to = |name: &str, weight| BackendRef { name: name.to_owned(), port, weight };
    let all = || HttpRouteMatch { path: PathMatch { kind: "PathPrefix", value: "/" }, headers: Vec::new() };
    let rules = match k.strategy {
        KubeStrategy::Shadow => {
            let mirror = bp(&t.mirror);
            let (percent, fraction) = if mirror.is_multiple_of(100) { (Some(mirror / 100), None) } else { (None, Some(Fraction { numerator: mirror, denominator: TOTAL_BP })) };
            vec![HttpRouteRule {
                name: "shadow",
                matches: vec![all()],
                filters: vec![HttpRouteFilter { kind: "RequestMirror", request_mirror: RequestMirror { backend_ref: ServiceRef { name: canary, port }, percent, fraction } }],
                backend_refs: vec![to(&stable, TOTAL_BP)],
            }]
        }
        _ => {
            let weight = bp(&t.weight);
            vec![
                HttpRouteRule {
                    name: "canary-header",
                    matches: vec![HttpRouteMatch {
                        path: PathMatch { kind: "PathPrefix", value: "/" },
                        headers: vec![HeaderMatch { kind: "Exact", name: t.header.name.clone(), value: t.header.value.clone() }],
                    }],
                    filters: Vec::new(),
                    backend_refs: vec![to(&canary, TOTAL_BP)],
                },
                HttpRouteRule { name: "weighted", matches: vec![all()], filters: Vec::new(), backend_refs: vec![to(&stable, TOTAL_BP - weight), to(&canary, weight)] },
            ]
        }
    };
    let g = &k.gateway;
    Object {
        api_version: "gateway.networking.k8s.io/v1",
        kind: "HTTPRoute",
        metadata: meta(d, &d.name),
        body: Spec {
            spec: HttpRouteSpec {
                parent_refs: vec![ParentRef { name: g.name.clone(), namespace: g.namespace.clone(), section_name: g.section_name.clone() }],
                hostnames: k.ingress.iter().map(|i| i.host.clone()).collect(),
                rules,
            },
        },
    }
}
