use proptest::prelude::*;

use super::*;

const HELLO: &str = r#"
name = "hello"
description = "optional"
instances = 3
geolocation = ["acEU", "acNA"]
expire = 88000
[[component]]
name = "web"
wasm = "hello.wasm"
cpu = 0.1
ram = 64
hdd = 1
env = { GREETING = "hi" }
"#;

#[test]
fn parses_the_documented_example() {
    let spec = AppSpec::from_toml(HELLO).expect("valid");
    assert_eq!(spec.name, "hello");
    assert_eq!(spec.instances, 3);
    assert_eq!(spec.geolocation.len(), 2);
    assert_eq!(spec.geolocation[1].to_string(), "acNA");
    let c = &spec.components[0];
    assert_eq!((c.cpu_tenths, c.ram_mb, c.hdd_gb), (1, 64, 1));
    assert_eq!(c.env["GREETING"], "hi");
}

#[test]
fn defaults_apply() {
    let spec = AppSpec::from_toml("name = \"a\"\n[[component]]\nname = \"w\"\nwasm = \"a.wasm\"\n").expect("valid");
    assert_eq!(spec.instances, 1);
    assert_eq!(spec.expire, DEFAULT_EXPIRE_BLOCKS);
    assert!(spec.geolocation.is_empty());
}

#[test]
fn reports_every_error_with_its_path() {
    let bad = r#"
name = "Bad_Name"
instances = 0
geolocation = ["xxEU"]
[[component]]
name = "web"
wasm = "a.wasm"
cpu = 0.15
ram = 8
hdd = "big"
colour = "blue"
"#;
    let errors = AppSpec::from_toml(bad).expect_err("invalid");
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "name",
        "instances",
        "geolocation[0]",
        "component[0].cpu",
        "component[0].ram",
        "component[0].hdd",
        "component[0].colour",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
    let text = errors.to_string();
    assert!(text.contains("component[0].ram: must be a multiple of 1 MB and at least 16"), "{text}");
}

#[test]
fn type_errors_do_not_hide_range_errors() {
    let errors = AppSpec::from_toml("name = 5\ninstances = 500\n").expect_err("invalid");
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["name", "instances", "component"]);
}

#[test]
fn not_toml_is_one_clear_error() {
    let errors = AppSpec::from_toml("name = ").expect_err("invalid");
    assert_eq!(errors.0.len(), 1);
    assert!(errors.0[0].message.starts_with("not valid TOML"));
}

#[test]
fn duplicate_component_names_are_refused() {
    let text = "name = \"a\"\n[[component]]\nname = \"w\"\nwasm = \"a\"\n[[component]]\nname = \"w\"\nwasm = \"b\"\n";
    let errors = AppSpec::from_toml(text).expect_err("invalid");
    assert_eq!(errors.0[0].path, "component[1].name");
}

#[test]
fn chain_form_requires_content_hashes() {
    let mut spec = AppSpec::from_toml(HELLO).expect("valid");
    assert!(spec.validate_for_chain().is_err());
    spec.components[0].workload = Workload::Wasm(format!("blake3:{}", "ab".repeat(32)));
    spec.validate_for_chain().expect("hash reference is valid");
}

#[test]
fn geolocation_rules() {
    let rules: Vec<GeoRule> = ["acEU", "a!cEU_DE"].iter().map(|r| GeoRule::parse(r).expect("valid")).collect();
    assert!(geo_allows(&rules, "EU", "FR"));
    assert!(!geo_allows(&rules, "EU", "DE"));
    assert!(!geo_allows(&rules, "NA", "US"));
    assert!(geo_allows(&[], "AS", "SG"));
    let forbid_only = [GeoRule::parse("a!cAS").expect("valid")];
    assert!(geo_allows(&forbid_only, "NA", "US"));
    assert!(!geo_allows(&forbid_only, "AS", "SG"));
    assert!(GeoRule::parse("acXX").is_err());
    assert!(GeoRule::parse("acEU_de").is_err());
}

proptest! {
    #[test]
    fn geo_rules_round_trip(allow in any::<bool>(), c in 0usize..7, country in proptest::option::of("[A-Z]{2}")) {
        let rule = GeoRule { allow, continent: CONTINENTS[c].to_string(), country };
        prop_assert_eq!(GeoRule::parse(&rule.to_string()), Ok(rule));
    }

    #[test]
    fn names_accept_exactly_dns_labels(name in "[a-zA-Z0-9_-]{0,70}") {
        let dns_label = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        prop_assert_eq!(check_name(&name).is_ok(), dns_label);
    }

    #[test]
    fn valid_numbers_parse_and_invalid_ones_are_named(instances in 0u32..200, ram in 0u32..70_000, tenths in 0u32..200) {
        let text = format!(
            "name = \"p\"\ninstances = {instances}\n[[component]]\nname = \"w\"\nwasm = \"w.wasm\"\ncpu = {}\nram = {ram}\n",
            tenths as f64 / 10.0
        );
        match AppSpec::from_toml(&text) {
            Ok(spec) => {
                prop_assert!((1..=MAX_INSTANCES).contains(&instances));
                prop_assert!((MIN_RAM_MB..=MAX_RAM_MB).contains(&ram));
                prop_assert_eq!(spec.components[0].cpu_tenths, tenths);
            }
            Err(errors) => {
                let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
                prop_assert_eq!(paths.contains(&"instances"), !(1..=MAX_INSTANCES).contains(&instances));
                prop_assert_eq!(paths.contains(&"component[0].ram"), !(MIN_RAM_MB..=MAX_RAM_MB).contains(&ram));
                prop_assert_eq!(paths.contains(&"component[0].cpu"), !(1..=MAX_CPU_TENTHS).contains(&tenths));
            }
        }
    }
}

/// Lengths count characters, not bytes: 130 `é` (260 bytes) is a valid description, 257
/// characters is not.
#[test]
fn the_description_limit_counts_characters() {
    let spec = |description: &str| {
        AppSpec::from_toml(&format!(
            "name = \"a\"\ndescription = \"{description}\"\n[[component]]\nname = \"w\"\nwasm = \"a.wasm\"\n"
        ))
    };
    assert!(spec(&"é".repeat(130)).is_ok());
    assert!(spec(&"é".repeat(256)).is_ok());
    let refused = spec(&"é".repeat(257)).expect_err("too long");
    assert!(refused.to_string().contains("description"), "{refused}");
}

/// `[secrets]` is read on its own and never reaches the published spec.
#[test]
fn secrets_stay_out_of_the_spec() {
    let text = "name = \"vault\"\n[[component]]\nname = \"web\"\nwasm = \"x.wasm\"\n\n[secrets]\nDB_PASSWORD = \"s3cret\"\nKEY = \"@key.pem\"\n";
    let spec = AppSpec::from_toml(text).expect("a manifest with secrets is valid");
    assert!(!serde_json::to_string(&spec).expect("json").contains("s3cret"));
    let secrets = manifest_secrets(text).expect("secrets");
    assert_eq!(secrets["DB_PASSWORD"], "s3cret");
    assert_eq!(secrets["KEY"], "@key.pem");
    let bad = manifest_secrets("[secrets]\n\"1BAD\" = \"x\"\nN = 5\n").expect_err("refused");
    assert!(bad.to_string().contains("secrets.1BAD") && bad.to_string().contains("secrets.N"), "{bad}");
}

#[test]
fn container_components_parse_with_ports_and_paths() {
    let text = r#"
name = "shop"
[[component]]
name = "web"
image = "busybox:local"
image_archive = "busybox.tar"
ports = [80, { container = 8080, public = 9000, domain = "shop.example.com" }]
commands = ["httpd", "-f", "-p", "80"]
volumes = ["/data"]
health = "/healthz"
ram = 128
"#;
    let spec = AppSpec::from_toml(text).expect("valid");
    let Workload::Oci(oci) = &spec.components[0].workload else { panic!("a container") };
    assert_eq!(oci.image, "busybox:local");
    assert_eq!(oci.archive.as_deref(), Some("busybox.tar"));
    assert_eq!(oci.ports[0], OciPort { container: 80, public: 80, domain: None });
    assert_eq!(oci.ports[1], OciPort { container: 8080, public: 9000, domain: Some("shop.example.com".into()) });
    assert_eq!(oci.health_path.as_deref(), Some("/healthz"));
    assert_eq!(spec.components[0].blobs(), vec![("image_archive", "busybox.tar")]);
    // Chain form needs the archive's hash, not its path.
    let errors = spec.validate_for_chain().expect_err("a path");
    assert_eq!(errors.0[0].path, "component[0].image_archive");
}

#[test]
fn container_component_mistakes_name_their_field() {
    let cases = [
        ("wasm = \"a.wasm\"\nimage = \"x:1\"", "component[0].image"),
        ("cpu = 1", "component[0].wasm"),
        ("wasm = \"a.wasm\"\nports = [80]", "component[0].ports"),
        ("image = \"bad image\"", "component[0].image"),
        ("image = \"x:1\"\nports = [0]", "component[0].ports[0]"),
        ("image = \"x:1\"\nports = [70000]", "component[0].ports[0]"),
        ("image = \"x:1\"\nports = [80, 80]", "component[0].ports[1]"),
        ("image = \"x:1\"\nports = [1, 2, 3, 4, 5, 6]", "component[0].ports"),
        ("image = \"x:1\"\nports = [{ container = 80, domain = \"no\" }]", "component[0].ports[0].domain"),
        ("image = \"x:1\"\nvolumes = [\"data\"]", "component[0].volumes[0]"),
        ("image = \"x:1\"\nvolumes = [\"/a/../etc\"]", "component[0].volumes[0]"),
        ("image = \"x:1\"\nhealth = \"healthz\"", "component[0].health"),
        ("image = \"x:1\"\ncommands = \"httpd\"", "component[0].commands"),
    ];
    for (body, path) in cases {
        let text = format!("name = \"a\"\n[[component]]\nname = \"c\"\n{body}\n");
        let errors = AppSpec::from_toml(&text).expect_err(body);
        assert_eq!(errors.0.len(), 1, "{body}: {errors}");
        assert_eq!(errors.0[0].path, path, "{body}: {errors}");
    }
}

#[test]
fn network_with_names_other_apps_once() {
    let base = "name = \"web\"\n[[component]]\nname = \"w\"\nwasm = \"a.wasm\"\n";
    let spec = AppSpec::from_toml(&format!("{base}[network]\nwith = [\"db\", \"cache\"]\n")).expect("valid");
    assert_eq!(spec.network.with, ["db", "cache"]);
    let json = serde_json::to_string(&spec).expect("json");
    assert!(json.contains(r#""network":{"with":["db","cache"]}"#), "{json}");
    // Absent: nothing in the JSON, so earlier signatures and hashes stay the same.
    let plain = AppSpec::from_toml(base).expect("valid");
    assert!(!serde_json::to_string(&plain).expect("json").contains("network"));
    assert_eq!(serde_json::from_str::<AppSpec>(&json).expect("back"), spec);

    let errors =
        AppSpec::from_toml(&format!("{base}[network]\nwith = [\"web\", \"Db\", \"db2\", \"db2\", 3]\nsize = 1\n"))
            .expect_err("invalid");
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["network.size", "network.with[4]", "network.with[0]", "network.with[1]", "network.with[3]"],
        "{errors}"
    );
    assert!(errors.to_string().contains("always on its own network"), "{errors}");
    let errors = AppSpec::from_toml(&format!("network = \"db\"\n{base}")).expect_err("invalid");
    assert_eq!(errors.0[0].path, "network", "{errors}");
}
