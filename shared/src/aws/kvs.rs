//! The CloudFront KeyValueStore [`EdgeStore`]: the data plane the edge
//! publisher writes through (DescribeKeyValueStore for the ETag, ListKeys,
//! UpdateKeys with `If-Match`). In AWS the SDK signs with SigV4A, as that
//! API requires; an endpoint override (the local store, tools::kvs) is used
//! as given, since the service's own endpoint rules would put the account
//! id in front of its host.

use aws_config::SdkConfig;
use aws_sdk_cloudfrontkeyvaluestore::Client;
use aws_sdk_cloudfrontkeyvaluestore::config::endpoint::{
    Endpoint, EndpointFuture, Params, ResolveEndpoint,
};
use aws_sdk_cloudfrontkeyvaluestore::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudfrontkeyvaluestore::types::{DeleteKeyRequestListItem, PutKeyRequestListItem};

use crate::edge::{Change, EdgeStore, Written};
use crate::error::InfraError;
use crate::ports::PortResult;

use super::classify;

const SERVICE: &str = "cloudfront-keyvaluestore";

pub struct KvsStore {
    client: Client,
    arn: String,
}

/// Every request to one URL, whatever the store's ARN says.
#[derive(Debug)]
struct Fixed(String);

impl ResolveEndpoint for Fixed {
    fn resolve_endpoint(&self, _: &Params) -> EndpointFuture<'_> {
        EndpointFuture::ready(Ok(Endpoint::builder().url(self.0.clone()).build()))
    }
}

impl KvsStore {
    /// The store `arn`; `endpoint` overrides AWS's (a local store).
    pub fn new(sdk: &SdkConfig, arn: impl Into<String>, endpoint: Option<&str>) -> Self {
        let mut config = aws_sdk_cloudfrontkeyvaluestore::config::Builder::from(sdk);
        if let Some(url) = endpoint {
            config = config.endpoint_resolver(Fixed(url.to_owned()));
        }
        Self {
            client: Client::from_conf(config.build()),
            arn: arn.into(),
        }
    }
}

impl EdgeStore for KvsStore {
    async fn version(&self) -> PortResult<String> {
        let out = self
            .client
            .describe_key_value_store()
            .kvs_arn(&self.arn)
            .send()
            .await
            .map_err(|e| classify(SERVICE, e))?;
        Ok(out.e_tag().to_owned())
    }

    async fn entries(&self) -> PortResult<Vec<(String, String)>> {
        let mut entries = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_keys()
                .kvs_arn(&self.arn)
                .max_results(50)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| classify(SERVICE, e))?;
            entries.extend(
                out.items()
                    .iter()
                    .map(|i| (i.key().to_owned(), i.value().to_owned())),
            );
            match out.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(entries),
            }
        }
    }

    async fn write(&self, changes: &[Change], version: &str) -> PortResult<Written> {
        let built = |e: aws_sdk_cloudfrontkeyvaluestore::error::BuildError| {
            InfraError::permanent(SERVICE, format!("building UpdateKeys: {e}"))
        };
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        for c in changes {
            match c {
                Change::Put { key, value } => puts.push(
                    PutKeyRequestListItem::builder()
                        .key(key)
                        .value(value)
                        .build()
                        .map_err(built)?,
                ),
                Change::Delete { key } => deletes.push(
                    DeleteKeyRequestListItem::builder()
                        .key(key)
                        .build()
                        .map_err(built)?,
                ),
            }
        }
        let sent = self
            .client
            .update_keys()
            .kvs_arn(&self.arn)
            .if_match(version)
            .set_puts(Some(puts))
            .set_deletes(Some(deletes))
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Written::At(out.e_tag().to_owned())),
            // A stale If-Match: the model's ConflictException (HTTP 409),
            // or a bare 412 Precondition Failed.
            Err(SdkError::ServiceError(se))
                if se.err().code() == Some("ConflictException")
                    || se.raw().status().as_u16() == 412 =>
            {
                Ok(Written::Stale)
            }
            Err(e) => Err(classify(SERVICE, e)),
        }
    }
}
