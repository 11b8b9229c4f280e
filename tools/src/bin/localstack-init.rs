//! `/var/rapid/init` of LocalStack's Lambda containers on machines where
//! LocalStack cannot download its own (tools::lambda_init says how).

use anyhow::Result;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tools::lambda_init::apply_chmod_paths()?;
    let settings = tools::lambda_init::Settings::from_env()?;
    tools::lambda_init::run(settings).await
}
