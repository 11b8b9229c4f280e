//! Secrets from SSM Parameter Store (LocalStack's SSM on the local stack),
//! as the functions read them at init.

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
