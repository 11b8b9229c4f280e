//! The library every flashsale function uses: domain types and decisions
//! (no I/O), the ports, their adapters (Redis, SQS, DynamoDB), configuration
//! and telemetry.

pub mod aws;
pub mod batch;
pub mod buckets;
pub mod config;
pub mod deny;
pub mod domain;
pub mod edge;
pub mod error;
pub mod faults;
pub mod http;
pub mod ledger;
pub mod lifecycle;
pub mod live;
pub mod payment;
pub mod ports;
pub mod redis;
pub mod retry;
pub mod room;
pub mod stock;
pub mod telemetry;
pub mod wiring;

#[cfg(any(test, feature = "embedded"))]
pub mod embedded;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
