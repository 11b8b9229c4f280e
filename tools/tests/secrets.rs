//! Secrets from SSM Parameter Store (LocalStack's SSM on the local stack),
//! as the functions read them at init; the stack's own Redis password.

mod common;

use aws_sdk_ssm::types::ParameterType;
use common::{require_env, unique};

#[tokio::test]
async fn secure_strings_are_read_decrypted_and_a_missing_one_is_named() {
    require_env("AWS_ENDPOINT_URL_SSM");
    let sdk = shared::aws::load_sdk_config().await;
    let name = format!("/{}/admin-token", unique("secrets"));
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name(&name)
        .value("s3cret-admin-token-0123456789")
        .r#type(ParameterType::SecureString)
        // A retried attempt (LocalStack's first SSM call can outlast the
        // SDK's 3 s attempt timeout while it loads, and still land) must
        // not fail as ParameterAlreadyExists: the name is unique anyway.
        .overwrite(true)
        .send()
        .await
        .expect("putting the parameter into LocalStack's SSM");
    let value = shared::aws::ssm_secret(&sdk, &name).await.unwrap();
    assert_eq!(value, "s3cret-admin-token-0123456789");
    let missing = format!("{name}-missing");
    let err = shared::aws::ssm_secret(&sdk, &missing).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("ParameterNotFound"), "{err}");
}

/// The stack's Redis listens on the Docker bridge too (for the functions'
/// containers): a client without the stack's password is refused.
#[tokio::test]
async fn the_stacks_redis_refuses_a_client_without_its_password() {
    let url = require_env("FLASHSALE_REDIS_URL");
    let info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .expect("FLASHSALE_REDIS_URL parses");
    assert!(
        info.redis_settings().password().is_some(),
        "the stack's URL carries no password: {url}"
    );
    async fn ping(info: impl redis::IntoConnectionInfo) -> redis::RedisResult<String> {
        let client = redis::Client::open(info)?;
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async(&mut c).await
    }
    assert_eq!(
        ping(info.clone()).await.expect("PONG with the password"),
        "PONG"
    );
    let anonymous = format!("redis://{}/", info.addr());
    let err = ping(anonymous)
        .await
        .expect_err("refused without the password");
    assert!(
        err.to_string().contains("NOAUTH") || err.to_string().contains("AUTH"),
        "{err}"
    );
}
