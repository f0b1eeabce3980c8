use serde_json::json;

use super::*;
use crate::spec::{AppSpec, OciPort, Workload};

/// A v8 spec FluxOS accepts: busybox's httpd on port 31000, two instances in Europe.
fn valid() -> Value {
    json!({
        "version": 8,
        "name": "busyweb",
        "description": "busybox httpd",
        "owner": "1CbErtneaX2QVyUfwU7JGB7VzvPgrgc3uC",
        "compose": [{
            "name": "web",
            "description": "httpd",
            "repotag": "busybox-httpd:latest",
            "ports": [31000],
            "containerPorts": [80],
            "domains": [""],
            "environmentParameters": ["GREETING=hi"],
            "commands": ["httpd", "-f", "-p", "80"],
            "containerData": "/data",
            "repoauth": "",
            "cpu": 0.5,
            "ram": 200,
            "hdd": 1
        }],
        "instances": 2,
        "contacts": [],
        "geolocation": ["acEU", "acEU_DE", "a!cAS"],
        "expire": 22000,
        "nodes": [],
        "staticip": false,
        "datacenter": false,
        "enterprise": ""
    })
}

fn parse(value: &Value) -> Result<FluxSpec, ValidationErrors> {
    FluxSpec::parse(&value.to_string())
}

#[test]
fn a_valid_v8_spec_reads_whole() {
    let spec = parse(&valid()).expect("valid");
    assert_eq!(spec.name, "busyweb");
    assert_eq!(spec.instances, 2);
    assert_eq!(spec.geolocation.len(), 3);
    let web = &spec.compose[0];
    assert_eq!((web.ports.clone(), web.container_ports.clone()), (vec![31000], vec![80]));
    assert_eq!((web.cpu_tenths, web.ram_mb, web.hdd_gb), (5, 200, 1));
    assert_eq!(web.container_data.as_deref(), Some("/data"));
    // Numbers written as strings, as FluxOS specs often are, read the same.
    let mut strings = valid();
    strings["compose"][0]["cpu"] = json!("0.5");
    strings["compose"][0]["ports"] = json!(["31000"]);
    assert_eq!(parse(&strings).expect("valid"), spec);
}

/// Each rule broken alone gives exactly one error, at the field that breaks it.
#[test]
fn each_broken_rule_is_one_error_naming_its_field() {
    type Break = fn(&mut Value);
    let cases: Vec<(&str, Break, &str)> = vec![
        ("unknown top-level key", |v| v["colour"] = json!("red"), "colour"),
        ("unknown component key", |v| v["compose"][0]["volumes"] = json!([]), "compose[0].volumes"),
        ("version 7", |v| v["version"] = json!(7), "version"),
        ("name with a dot", |v| v["name"] = json!("my.app"), "name"),
        ("name too long", |v| v["name"] = json!("a".repeat(64)), "name"),
        ("name ends with a hyphen", |v| v["name"] = json!("app-"), "name"),
        ("name starts with zel", |v| v["name"] = json!("zelapp"), "name"),
        ("name starts with flux", |v| v["name"] = json!("FluxApp"), "name"),
        ("component name with a hyphen", |v| v["compose"][0]["name"] = json!("web-1"), "compose[0].name"),
        ("component name starts with flux", |v| v["compose"][0]["name"] = json!("fluxweb"), "compose[0].name"),
        ("no components", |v| v["compose"] = json!([]), "compose"),
        (
            "eleven components",
            |v| {
                let base = v["compose"][0].clone();
                v["compose"] = Value::Array(
                    (0..11)
                        .map(|i| {
                            let mut c = base.clone();
                            c["name"] = json!(format!("web{i}"));
                            c["ports"] = json!([31000 + i]);
                            c["cpu"] = json!(0.1);
                            c["ram"] = json!(100);
                            c
                        })
                        .collect(),
                );
            },
            "compose",
        ),
        (
            "ports and containerPorts differ in length",
            |v| v["compose"][0]["containerPorts"] = json!([80, 81]),
            "compose[0].containerPorts",
        ),
        (
            "six ports",
            |v| {
                v["compose"][0]["ports"] = json!([31000, 31001, 31002, 31003, 31004, 31005]);
            },
            "compose[0].ports",
        ),
        ("port 0", |v| v["compose"][0]["ports"] = json!([0]), "compose[0].ports[0]"),
        ("port 70000", |v| v["compose"][0]["ports"] = json!([70000]), "compose[0].ports[0]"),
        ("banned port 22", |v| v["compose"][0]["ports"] = json!([22]), "compose[0].ports[0]"),
        ("banned port in 16100-16299", |v| v["compose"][0]["ports"] = json!([16150]), "compose[0].ports[0]"),
        ("banned port in 30000-30099", |v| v["compose"][0]["ports"] = json!([30050]), "compose[0].ports[0]"),
        (
            "a port used twice",
            |v| {
                let mut second = v["compose"][0].clone();
                second["name"] = json!("api");
                if let Some(c) = v["compose"].as_array_mut() {
                    c.push(second);
                }
            },
            "compose[1].ports[0]",
        ),
        (
            "a component name used twice",
            |v| {
                let mut second = v["compose"][0].clone();
                second["ports"] = json!([31001]);
                if let Some(c) = v["compose"].as_array_mut() {
                    c.push(second);
                }
            },
            "compose[1].name",
        ),
        (
            "21 environment entries",
            |v| {
                v["compose"][0]["environmentParameters"] = json!(vec!["A=1"; 21]);
            },
            "compose[0].environmentParameters",
        ),
        ("a 401-character command", |v| v["compose"][0]["commands"] = json!(["x".repeat(401)]), "compose[0].commands"),
        ("a 201-character repotag", |v| v["compose"][0]["repotag"] = json!("r".repeat(201)), "compose[0].repotag"),
        ("a 257-character description", |v| v["description"] = json!("é".repeat(257)), "description"),
        ("no instances", |v| v["instances"] = json!(0), "instances"),
        ("101 instances", |v| v["instances"] = json!(101), "instances"),
        ("11 geolocation rules", |v| v["geolocation"] = json!(vec!["acEU"; 11]), "geolocation"),
        ("a geolocation rule in another syntax", |v| v["geolocation"] = json!(["EU"]), "geolocation[0]"),
        ("expire 0", |v| v["expire"] = json!(0), "expire"),
        ("expire past 1,056,000", |v| v["expire"] = json!(1_056_001), "expire"),
        ("cpu 0.25", |v| v["compose"][0]["cpu"] = json!(0.25), "compose[0].cpu"),
        ("cpu 0", |v| v["compose"][0]["cpu"] = json!(0), "compose[0].cpu"),
        ("ram 150", |v| v["compose"][0]["ram"] = json!(150), "compose[0].ram"),
        ("hdd 1.5", |v| v["compose"][0]["hdd"] = json!(1.5), "compose[0].hdd"),
        ("more than the largest node", |v| v["compose"][0]["ram"] = json!(59_100), "compose"),
        ("a replicated volume", |v| v["compose"][0]["containerData"] = json!("r:/data"), "compose[0].containerData"),
        (
            "a primary/standby volume",
            |v| v["compose"][0]["containerData"] = json!("g:/data"),
            "compose[0].containerData",
        ),
        ("a private registry", |v| v["compose"][0]["repoauth"] = json!("user:token"), "compose[0].repoauth"),
        ("an enterprise spec", |v| v["enterprise"] = json!("c2VjcmV0"), "enterprise"),
        ("pinned nodes", |v| v["nodes"] = json!(["1.2.3.4"]), "nodes"),
        ("a static ip", |v| v["staticip"] = json!(true), "staticip"),
        ("a data center", |v| v["datacenter"] = json!(true), "datacenter"),
    ];
    for (what, break_it, field) in cases {
        let mut spec = valid();
        break_it(&mut spec);
        let errors = parse(&spec).expect_err(what).0;
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert_eq!(errors[0].path, field, "{what}: {errors:?}");
    }
}

#[test]
fn unsupported_features_say_so_by_name() {
    let mut spec = valid();
    spec["compose"][0]["containerData"] = json!("r:/data");
    let errors = parse(&spec).expect_err("refused").to_string();
    assert!(errors.contains("not supported yet") && errors.contains("r:"), "{errors}");
    assert!(FluxSpec::parse("[1, 2]").is_err());
    assert!(FluxSpec::parse("{").expect_err("not json").to_string().contains("not valid JSON"));
}

#[test]
fn a_v8_spec_maps_onto_our_manifest() {
    let mut value = valid();
    value["name"] = json!("BusyWeb");
    value["compose"][0]["domains"] = json!(["Shop.Example.com"]);
    let spec = AppSpec::from_manifest(&value.to_string()).expect("maps");
    assert_eq!(spec.name, "busyweb");
    assert_eq!((spec.instances, spec.expire, spec.geolocation.len()), (2, 22_000, 3));
    let web = &spec.components[0];
    assert_eq!(web.name, "web");
    assert_eq!((web.cpu_tenths, web.ram_mb, web.hdd_gb), (5, 200, 1));
    assert_eq!(web.env.get("GREETING").map(String::as_str), Some("hi"));
    let Workload::Oci(oci) = &web.workload else { panic!("a container") };
    assert_eq!(oci.image, "busybox-httpd:latest");
    assert_eq!(oci.ports, vec![OciPort { container: 80, public: 31000, domain: Some("shop.example.com".into()) }]);
    assert_eq!(oci.commands, ["httpd", "-f", "-p", "80"]);
    assert_eq!(oci.volumes, ["/data"]);
    // What Flux takes and we cannot run is named by its Flux field.
    let mut odd = valid();
    odd["compose"][0]["environmentParameters"] = json!(["JUST_A_NAME"]);
    let errors = AppSpec::from_manifest(&odd.to_string()).expect_err("no value");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path, "compose[0].environmentParameters[0]");
    // TOML still reads as TOML.
    let toml = "name = \"a\"\n[[component]]\nname = \"w\"\nwasm = \"a.wasm\"\n";
    assert_eq!(AppSpec::from_manifest(toml).expect("toml").name, "a");
}

#[test]
fn network_with_is_read_from_the_description_as_fluxos_reads_it() {
    let cases: [(&str, &[&str]); 9] = [
        ("db and web: networkWith:[appA,appB]", &["appA", "appB"]),
        ("NETWORKWITH = [ \"appA\" , 'appB' ]", &["appA", "appB"]),
        ("networkWith:[appA, appa, bad_name, -dash, ok-2]", &["appA", "ok-2"]),
        ("networkWith:[]", &[]),
        ("no token here", &[]),
        // Not at the start of a word, or without `:`/`=` and brackets: not a token.
        ("xnetworkWith:[appA]", &[]),
        ("networkWith appA", &[]),
        ("networkWith:[appA", &[]),
        // The first well-formed token counts.
        ("networkWith: later networkWith=[b]", &["b"]),
    ];
    for (description, want) in cases {
        assert_eq!(parse_network_with(description), want, "{description}");
    }
}

#[test]
fn network_with_becomes_the_specs_network_lowercased_without_itself() {
    let mut v = valid();
    v["description"] = json!("shares networkWith:[BusyWeb, Postgres]");
    let spec = parse(&v).expect("valid").to_app_spec().expect("maps");
    assert_eq!(spec.network.with, ["postgres"]);
    // Without a token the spec serializes as before networks existed.
    let plain = parse(&valid()).expect("valid").to_app_spec().expect("maps");
    assert!(!serde_json::to_string(&plain).expect("json").contains("network"));
}
