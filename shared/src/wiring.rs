//! What every Lambda's `main` does first: logs, the SDK configuration and
//! the fault plan, then adapters built once per process from the environment.

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::aws::{DynamoStore, SqsQueue};
use crate::error::ConfigError;
use crate::faults::{FaultPlan, Faulty};
use crate::redis::RedisGate;
use crate::{aws, config, telemetry};

pub struct Wiring {
    pub sdk: SdkConfig,
    pub faults: Arc<FaultPlan>,
}

impl Wiring {
    pub async fn from_env() -> Result<Self, ConfigError> {
        telemetry::init();
        Ok(Self {
            sdk: aws::load_sdk_config().await,
            faults: FaultPlan::from_env()?,
        })
    }

    pub fn gate(&self) -> Result<Faulty<RedisGate>, ConfigError> {
        Ok(Faulty::new(
            RedisGate::new(config::redis_settings()?),
            self.faults.clone(),
        ))
    }

    pub fn store(&self) -> Faulty<DynamoStore> {
        Faulty::new(
            DynamoStore::new(&self.sdk, config::table_name()),
            self.faults.clone(),
        )
    }

    pub fn orders_queue(&self) -> Result<Faulty<SqsQueue>, ConfigError> {
        Ok(Faulty::new(
            SqsQueue::new(&self.sdk, config::orders_queue_url()?),
            self.faults.clone(),
        ))
    }
}
