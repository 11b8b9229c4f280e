//! What `sam local` needs to run the real bootstraps against the local
//! stack: a copy of template.yaml whose functions point at built bootstraps,
//! and the environment file with this stack's values filled in.
//!
//! `sam local` only passes a function the variables its template declares,
//! so every variable of the environment file is declared (empty) here; and it
//! resolves neither our queues nor our table, so intrinsic values become
//! empty strings the file fills. What sam local cannot use goes: build
//! metadata, IAM policies, VPC settings, SQS and schedule events (the
//! runner's `--invoke` drives those), and authorizers (it runs none).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_yaml::{Mapping, Value};

/// Where the built binaries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `<dir>/<binary>`: cargo's own build for this machine.
    Host,
    /// `<dir>/<binary>/bootstrap`: cargo-lambda's `--lambda-dir`.
    Lambda,
}

/// Copies each function's binary of `template` to `<out>/<binary>/bootstrap`,
/// the directory sam local mounts as /var/task.
pub fn place_bootstraps(template: &str, from: &Path, layout: Layout, out: &Path) -> Result<()> {
    let t: Value = serde_yaml::from_str(template).context("template.yaml is not YAML")?;
    let binaries = t["Resources"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(_, r)| r["Metadata"]["BuildProperties"]["Binary"].as_str());
    for binary in binaries {
        let src = match layout {
            Layout::Host => from.join(binary),
            Layout::Lambda => from.join(binary).join("bootstrap"),
        };
        if !src.is_file() {
            bail!(
                "{} is missing: build it first (make {})",
                src.display(),
                match layout {
                    Layout::Host => "dev-build",
                    Layout::Lambda => "build-x86_64 or build-arm64",
                }
            );
        }
        let dir = out.join(binary);
        std::fs::create_dir_all(&dir)?;
        let dst = dir.join("bootstrap");
        let _ = std::fs::remove_file(&dst);
        // A hard link where it can: debug binaries are large.
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// Which of the template's functions a `sam local` process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Functions behind HTTP API routes (`sam local start-api`).
    Api,
    /// Queue consumers and scheduled functions (`sam local start-lambda`).
    Events,
}

/// The template for `role`, with each function's code at
/// `<bootstraps>/<binary>/bootstrap`, for this machine's architecture.
pub fn template(
    template: &str,
    env_vars: &BTreeMap<String, String>,
    bootstraps: &Path,
    role: Role,
) -> Result<String> {
    let mut t: Value = serde_yaml::from_str(template).context("template.yaml is not YAML")?;
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86_64" => "x86_64",
        other => bail!("sam local runs x86_64 or arm64 bootstraps, not {other}"),
    };
    let globals = t["Globals"]["Function"]
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("template.yaml has no Globals.Function"))?;
    globals.remove("VpcConfig");
    globals.insert("Architectures".into(), vec![Value::from(arch)].into());
    let vars = env_vars
        .keys()
        .map(|k| (Value::from(k.as_str()), Value::from("")))
        .collect::<Mapping>();
    globals.insert(
        "Environment".into(),
        Value::Mapping(Mapping::from_iter([("Variables".into(), vars.into())])),
    );

    let resources = t["Resources"]
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("template.yaml has no Resources"))?;
    let mut kept = Mapping::new();
    for (id, mut r) in std::mem::take(resources) {
        match r["Type"].as_str() {
            Some("AWS::Serverless::HttpApi") if role == Role::Api => {
                if let Some(p) = r["Properties"].as_mapping_mut() {
                    p.remove("Auth");
                }
                kept.insert(id, r);
            }
            // A conditional function (the edge publisher) needs what sam
            // local does not run (CloudFront); the runner runs the
            // publisher itself when asked.
            Some("AWS::Serverless::Function") if !r["Condition"].is_null() => {}
            Some("AWS::Serverless::Function") => {
                let binary = r["Metadata"]["BuildProperties"]["Binary"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{id:?} has no Metadata.BuildProperties.Binary"))?
                    .to_owned();
                let http = local_function(&mut r, &bootstraps.join(binary))?;
                if http == (role == Role::Api) {
                    kept.insert(id, r);
                }
            }
            _ => {}
        }
    }
    *resources = kept;
    // JSON: YAML would need quotes serde_yaml does not write (the version
    // date), and intrinsic functions have one spelling there.
    serde_json::to_string_pretty(&to_json(t)?).context("writing the sam local template")
}

/// The template as JSON, `!Tag` shorthands in their `Fn::` forms.
pub(crate) fn to_json(v: Value) -> Result<serde_json::Value> {
    Ok(match v {
        Value::Tagged(t) => {
            let tag = t.tag.to_string();
            let tag = tag.trim_start_matches('!');
            let value = match (tag, t.value) {
                ("GetAtt", Value::String(s)) => {
                    serde_json::to_value(s.splitn(2, '.').collect::<Vec<_>>())?
                }
                (_, other) => to_json(other)?,
            };
            let key = if tag == "Ref" {
                "Ref".to_owned()
            } else {
                format!("Fn::{tag}")
            };
            serde_json::json!({ key: value })
        }
        Value::Mapping(m) => serde_json::Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = k
                        .as_str()
                        .ok_or_else(|| anyhow!("a key is not a string: {k:?}"))?;
                    Ok((k.to_owned(), to_json(v)?))
                })
                .collect::<Result<_>>()?,
        ),
        Value::Sequence(s) => {
            serde_json::Value::Array(s.into_iter().map(to_json).collect::<Result<_>>()?)
        }
        other => serde_json::to_value(other)?,
    })
}

/// Rewrites one function for sam local; whether it serves HTTP routes.
fn local_function(r: &mut Value, code: &Path) -> Result<bool> {
    let f = r
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("a function is not a mapping"))?;
    f.remove("Metadata");
    let p = f
        .get_mut("Properties")
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| anyhow!("a function has no Properties"))?;
    p.insert("CodeUri".into(), code.to_string_lossy().as_ref().into());
    p.remove("Policies");
    // Values CloudFormation would resolve: the environment file sets them.
    if let Some(vars) = p
        .get_mut("Environment")
        .and_then(|e| e.get_mut("Variables"))
        .and_then(Value::as_mapping_mut)
    {
        for (_, v) in vars.iter_mut() {
            if !matches!(v, Value::String(_) | Value::Number(_)) {
                *v = "".into();
            }
        }
    }
    let mut http = false;
    if let Some(events) = p.get_mut("Events").and_then(Value::as_mapping_mut) {
        events.retain(|_, e| e["Type"] == "HttpApi");
        for (_, e) in events.iter_mut() {
            if let Some(props) = e["Properties"].as_mapping_mut() {
                props.remove("Auth");
            }
        }
        http = !events.is_empty();
        if !http {
            p.remove("Events");
        }
    }
    Ok(http)
}

/// The environment file for `sam local --env-vars`, with `${VAR}` in its
/// values filled from `lookup`; every variable named must be set unless
/// written `${VAR:-default}`.
pub fn fill_env_file(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>> {
    let file: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_str(text)
        .context("the env file must be {\"Parameters\": {\"VAR\": \"value\", ...}}")?;
    let params = file
        .get("Parameters")
        .ok_or_else(|| anyhow!("the env file has no \"Parameters\" object"))?;
    params
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                substitute(v, &lookup).with_context(|| k.clone())?,
            ))
        })
        .collect()
}

fn substitute(value: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| anyhow!("unclosed ${{ in {value:?}"))?;
        let (name, default) = match rest[start + 2..start + end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&rest[start + 2..start + end], None),
        };
        // As the shell's `:-`: set but empty takes the default too.
        let v = lookup(name)
            .filter(|v| default.is_none() || !v.is_empty())
            .or_else(|| default.map(str::to_owned))
            .ok_or_else(|| {
                anyhow!("{name} is not set; source the stack's env and the provision exports first")
            })?;
        out.push_str(&v);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The filled file, as `--env-vars` reads it.
pub fn env_file_json(vars: &BTreeMap<String, String>) -> Result<String> {
    Ok(serde_json::to_string_pretty(
        &serde_json::json!({ "Parameters": vars }),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = include_str!("../../template.yaml");

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("FLASHSALE_TABLE".to_owned(), "t".to_owned()),
            ("AWS_ENDPOINT_URL_SQS".to_owned(), "http://x".to_owned()),
        ])
    }

    fn parsed(role: Role) -> serde_json::Value {
        serde_json::from_str(&template(TEMPLATE, &vars(), Path::new("/b"), role).unwrap()).unwrap()
    }

    fn function_ids(t: &serde_json::Value) -> Vec<String> {
        t["Resources"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[test]
    fn the_api_serves_the_routes_and_start_lambda_the_rest() {
        let api = parsed(Role::Api);
        let events = parsed(Role::Events);
        assert_eq!(
            function_ids(&api),
            [
                "AdminFunction",
                "DeductFunction",
                "OrderStatusFunction",
                "PaymentWebhookFunction"
            ]
        );
        assert_eq!(
            function_ids(&events),
            [
                "CompensationFunction",
                "OrderConsumerFunction",
                "OrderExpirerFunction",
                "OutboxSweeperFunction"
            ]
        );
        let deduct = &api["Resources"]["DeductFunction"]["Properties"];
        assert_eq!(deduct["CodeUri"], "/b/deduct");
        assert_eq!(
            deduct["Environment"]["Variables"]["FLASHSALE_ORDERS_QUEUE_URL"],
            ""
        );
        assert!(
            deduct["Policies"].is_null() && deduct["Events"]["Buy"]["Properties"]["Auth"].is_null()
        );
        assert!(api["Resources"]["FlashSaleApi"]["Properties"]["Auth"].is_null());
        assert!(events["Resources"]["OrderConsumerFunction"]["Properties"]["Events"].is_null());
    }

    #[test]
    fn every_variable_of_the_env_file_is_declared() {
        let t = parsed(Role::Events);
        let declared = &t["Globals"]["Function"]["Environment"]["Variables"];
        assert_eq!(declared["FLASHSALE_TABLE"], "");
        assert_eq!(declared["AWS_ENDPOINT_URL_SQS"], "");
        assert!(t["Globals"]["Function"]["VpcConfig"].is_null());
    }

    #[test]
    fn the_env_file_is_filled_from_the_environment() {
        let text =
            r#"{"Parameters": {"A": "redis://${HOST}:${PORT}/x", "B": "1", "C": "${NOPE:-0}"}}"#;
        let lookup = |k: &str| match k {
            "HOST" => Some("127.0.0.1".to_owned()),
            "PORT" => Some("6379".to_owned()),
            _ => None,
        };
        let filled = fill_env_file(text, lookup).unwrap();
        assert_eq!(filled["A"], "redis://127.0.0.1:6379/x");
        assert_eq!((filled["B"].as_str(), filled["C"].as_str()), ("1", "0"));
        let missing = fill_env_file(r#"{"Parameters": {"A": "${NOPE}"}}"#, lookup).unwrap_err();
        assert!(
            format!("{missing:#}").contains("NOPE is not set"),
            "{missing:#}"
        );
    }
}
