//! The Docker LocalStack files cannot run here (no Docker engine), so this
//! keeps them consistent with what runs: the same resource names and
//! settings as `flashsale provision`, the same table layout as the code, the
//! same functions as the workspace, a pinned image.

use std::collections::BTreeMap;

use shared::aws::table;
use tools::provision::{MAX_RECEIVE_COUNT, Names};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn resources() -> BTreeMap<String, String> {
    read("localstack/resources.env")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn init_hook_and_provision_define_the_same_resources() {
    let r = resources();
    let names = Names::with_prefix(&r["FLASHSALE_PREFIX"]);
    assert_eq!(r["ORDERS_QUEUE"], names.orders_queue);
    assert_eq!(r["ORDERS_DLQ"], names.orders_dlq);
    assert_eq!(r["COMPENSATION_DLQ"], names.compensation_dlq);
    assert_eq!(r["TABLE"], names.table);
    assert_eq!(r["TABLE"], shared::config::table_name());
    assert_eq!(r["MAX_RECEIVE_COUNT"], MAX_RECEIVE_COUNT.to_string());
    assert_eq!(
        r["VISIBILITY_TIMEOUT"],
        tools::provision::DEFAULT_VISIBILITY_TIMEOUT.to_string()
    );
    assert_eq!(
        r["DLQ_RETENTION_SECONDS"],
        tools::provision::DLQ_RETENTION_SECONDS.to_string()
    );
    assert_eq!(r["TABLE_PK"], table::PK);
    assert_eq!(r["TABLE_GSI"], table::GSI1);
    assert_eq!(r["TABLE_GSI_PK"], table::GSI1_PK);
    assert_eq!(r["TABLE_GSI_SK"], table::GSI1_SK);
    assert_eq!(r["TABLE_DUE_GSI"], table::GSI2);
    assert_eq!(r["TABLE_DUE_GSI_PK"], table::GSI2_PK);
    assert_eq!(r["TABLE_DUE_GSI_SK"], table::GSI2_SK);
    assert_eq!(r["TABLE_TTL"], table::TTL);
    // The hook takes every name from resources.env (localstack/deploy.sh
    // takes them from template.yaml).
    for script in ["localstack/init/ready.d/10-flashsale-resources.sh"] {
        let text = read(script);
        assert!(text.contains("resources.env"), "{script}");
        for value in r.values() {
            // Queue names; the table is named like the prefix itself.
            if value.starts_with(&format!("{}-", r["FLASHSALE_PREFIX"])) {
                assert!(
                    !text.contains(value.as_str()),
                    "{script} hard-codes {value}"
                );
            }
        }
    }
    let hook = read("localstack/init/ready.d/10-flashsale-resources.sh");
    for var in [
        "$ORDERS_QUEUE",
        "$ORDERS_DLQ",
        "$COMPENSATION_DLQ",
        "$TABLE",
        "$MAX_RECEIVE_COUNT",
        "$TABLE_TTL",
        "$TABLE_DUE_GSI",
    ] {
        assert!(hook.contains(var), "the hook does not use {var}");
    }
}

#[test]
fn the_makefile_builds_every_function() {
    let makefile = read("Makefile");
    let line = makefile
        .lines()
        .find(|l| l.starts_with("FUNCTIONS :="))
        .unwrap();
    for entry in std::fs::read_dir(format!("{}/../functions", env!("CARGO_MANIFEST_DIR"))).unwrap()
    {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            line.split_whitespace().any(|w| w == name),
            "Makefile FUNCTIONS misses {name}"
        );
    }
}

#[test]
fn compose_pins_an_image_that_starts_without_an_account() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&read("localstack/docker-compose.yml")).unwrap();
    let ls = &compose["services"]["localstack"];
    let image = ls["image"].as_str().unwrap();
    assert_eq!(
        image, "localstack/localstack:4.14.0",
        "newer images need LOCALSTACK_AUTH_TOKEN"
    );
    let volumes: Vec<&str> = ls["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(volumes.contains(&"./init/ready.d:/etc/localstack/init/ready.d:ro"));
    assert!(volumes.contains(&"./resources.env:/etc/flashsale/resources.env:ro"));
    let services = ls["environment"]["SERVICES"].as_str().unwrap();
    for s in ["sqs", "dynamodb", "lambda", "events"] {
        assert!(services.split(',').any(|x| x == s), "SERVICES lacks {s}");
    }
    assert!(
        compose["services"]["redis"]["image"]
            .as_str()
            .unwrap()
            .starts_with("redis:7")
    );
}
