//! Tools around the flashsale functions: the local runner, provisioning of
//! the local stack, the demo sale and audits.

pub mod aftersale;
pub mod audit;
pub mod batching;
pub mod capacity;
pub mod cfnlocal;
pub mod chart;
pub mod client;
pub mod cluster;
pub mod crowd;
pub mod demo;
pub mod edge;
pub mod embedded;
pub mod gateway;
pub mod invoke;
pub mod kvs;
pub mod lambda_init;
pub mod loadtest;
pub mod provision;
pub mod queues;
pub mod runner;
pub mod samlocal;
pub mod top;
