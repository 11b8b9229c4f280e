//! LocalStack in Docker (localstack/docker-compose.yml) cannot run here (no
//! image registry), so this keeps its files consistent with what runs: the
//! services, network and Redis the deploy expects, a pinned image; and the
//! Makefile's functions with the workspace's.

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
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
fn compose_runs_what_the_deploy_needs_on_a_pinned_image() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&read("localstack/docker-compose.yml")).unwrap();
    let ls = &compose["services"]["localstack"];
    assert_eq!(
        ls["image"].as_str().unwrap(),
        "localstack/localstack:4.14.0",
        "newer images need LOCALSTACK_AUTH_TOKEN"
    );
    // The services the docker-less stack runs for the deploy, and DynamoDB
    // (the table lives in LocalStack's there).
    let start = read("localstack/start.sh");
    let needed = start
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("services=").filter(|s| s.contains("lambda")))
        .expect("start.sh names the Lambda stack's services");
    let services = ls["environment"]["SERVICES"].as_str().unwrap();
    for s in needed.split(',').chain(["dynamodb"]) {
        assert!(services.split(',').any(|x| x == s), "SERVICES lacks {s}");
    }
    let volumes = serde_yaml::to_string(&ls["volumes"]).unwrap();
    assert!(
        volumes.contains("/var/run/docker.sock:/var/run/docker.sock"),
        "Lambda needs the engine"
    );
    // The functions' containers join the network Redis is on, under the
    // name the deploy gives them, behind a password.
    let network = ls["environment"]["LAMBDA_DOCKER_NETWORK"].as_str().unwrap();
    assert_eq!(
        compose["networks"]["flashsale"]["name"].as_str(),
        Some(network)
    );
    let redis = &compose["services"]["redis"];
    assert!(
        redis["networks"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|n| n.as_str() == Some("flashsale"))
    );
    assert!(
        serde_yaml::to_string(&redis["command"])
            .unwrap()
            .contains("--requirepass")
    );
    let env = read("localstack/compose.env");
    assert!(
        env.contains("export FLASHSALE_REDIS_ENDPOINT=redis:6379"),
        "the deploy must name the redis service"
    );
    assert!(env.contains("export AWS_ENDPOINT_URL=http://127.0.0.1:4566"));
    let makefile = read("Makefile");
    assert!(
        makefile.contains(". localstack/compose.env"),
        "make deploy-localstack sources compose.env"
    );
}
