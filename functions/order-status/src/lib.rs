//! `GET /api/flash-sale/orders/{request_id}`: a buyer reads their request.
//! Redis first (it knows pending requests); DynamoDB when Redis has no state
//! or is unreachable. A buyer may read only their own requests.

use lambda_http::Request;

use shared::domain::{RequestId, RequestView};
use shared::http::{self as api, ApiError, HttpResponse};
use shared::ports::{OrderStore, StockGate};

pub struct OrderStatusApi<G, S> {
    pub gate: G,
    pub store: S,
    /// Local runner and tests: the buyer is `?user_id=` instead of the JWT `sub`.
    pub insecure_user_from_body: bool,
}

impl<G: StockGate, S: OrderStore> OrderStatusApi<G, S> {
    pub async fn handle(&self, req: Request) -> HttpResponse {
        let started = std::time::Instant::now();
        let answer = self.read(&req).await;
        shared::telemetry::record_latency("order_status", started);
        answer.unwrap_or_else(ApiError::into_response)
    }

    async fn read(&self, req: &Request) -> Result<HttpResponse, ApiError> {
        if req.method() != lambda_http::http::Method::GET {
            return Err(ApiError::new(405, "method_not_allowed"));
        }
        let id = match api::segments_after(req, "/api/flash-sale/orders").as_deref() {
            Some([id]) => RequestId::parse(id)?,
            _ => return Err(ApiError::new(404, "not_found")),
        };
        let caller = match api::jwt_subject(req) {
            Some(sub) => Some(sub),
            None if self.insecure_user_from_body => api::query_param(req, "user_id"),
            None => None,
        }
        .ok_or_else(|| ApiError::new(401, "unauthenticated"))?;
        let view = self
            .lookup(&id)
            .await?
            .ok_or_else(|| ApiError::new(404, "unknown_request"))?;
        if view.user_id.as_str() != caller {
            return Err(ApiError::new(403, "forbidden"));
        }
        Ok(api::json_response(200, &view))
    }

    async fn lookup(&self, id: &RequestId) -> Result<Option<RequestView>, ApiError> {
        match self.gate.request(id).await {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "redis unavailable; reading DynamoDB"),
        }
        Ok(self.store.order(id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Body, http};
    use shared::domain::{OrderStatus, ProductId, Quantity, UserId, from_unix_ms};
    use shared::fakes::{FakeGate, FakeStore};

    fn api() -> OrderStatusApi<FakeGate, FakeStore> {
        OrderStatusApi {
            gate: FakeGate::default(),
            store: FakeStore::default(),
            insecure_user_from_body: true,
        }
    }

    fn view(status: OrderStatus) -> RequestView {
        let p = ProductId::parse("p1").unwrap();
        RequestView {
            request_id: RequestId::new(&p),
            product_id: p,
            user_id: UserId::parse("u1").unwrap(),
            quantity: Quantity::new(1).unwrap(),
            status,
            updated_at: from_unix_ms(1_700_000_000_000),
            reservation: None,
        }
    }

    async fn get(a: &OrderStatusApi<FakeGate, FakeStore>, path: &str) -> (u16, serde_json::Value) {
        let req = http::Request::builder()
            .uri(path)
            .body(Body::Empty)
            .unwrap();
        let resp = a.handle(req).await;
        let body = serde_json::from_slice(resp.body().as_ref()).unwrap();
        (resp.status().as_u16(), body)
    }

    #[tokio::test]
    async fn redis_first() {
        let a = api();
        let v = view(OrderStatus::Pending);
        a.gate.put_request(v.clone());
        let (status, body) = get(
            &a,
            &format!("/api/flash-sale/orders/{}?user_id=u1", v.request_id),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "pending");
        assert_eq!(body["user_id"], "u1");
        assert_eq!(body["product_id"], "p1");
        assert_eq!(body["quantity"], 1);
        assert_eq!(body["updated_at"], "2023-11-14T22:13:20Z");
    }

    #[tokio::test]
    async fn dynamodb_when_redis_has_nothing_or_is_down() {
        let a = api();
        let v = view(OrderStatus::Placed);
        a.store
            .orders
            .lock()
            .unwrap()
            .insert(v.request_id.clone(), v.clone());
        let path = format!("/api/flash-sale/orders/{}?user_id=u1", v.request_id);
        assert_eq!(get(&a, &path).await.1["status"], "placed");
        a.gate.failures.fail_next(1);
        assert_eq!(get(&a, &path).await.1["status"], "placed");
    }

    #[tokio::test]
    async fn errors() {
        let a = api();
        let v = view(OrderStatus::Placed);
        a.gate.put_request(v.clone());
        let base = format!("/api/flash-sale/orders/{}", v.request_id);
        assert_eq!(get(&a, &format!("{base}?user_id=u2")).await.0, 403);
        assert_eq!(get(&a, &base).await.0, 401);
        assert_eq!(
            get(&a, "/api/flash-sale/orders/garbage?user_id=u1").await.0,
            400
        );
        let unknown = RequestId::new(&v.product_id);
        assert_eq!(
            get(&a, &format!("/api/flash-sale/orders/{unknown}?user_id=u1"))
                .await
                .0,
            404
        );
        a.store.failures.fail_next(1);
        assert_eq!(
            get(&a, &format!("/api/flash-sale/orders/{unknown}?user_id=u1"))
                .await
                .0,
            503
        );
    }
}
