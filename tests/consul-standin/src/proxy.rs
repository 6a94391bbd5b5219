//! What an agent does not hold itself (KV, sessions, health, catalog) it forwards to the server,
//! as a real agent forwards RPCs, with the request's token or else the agent's default token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::{Role, Shared, state};

/// The token a request carries: `X-Consul-Token`, `Authorization: Bearer`, or `?token=`.
pub fn request_token(headers: &axum::http::HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get("Authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        })
        .or_else(|| {
            query.and_then(|q| {
                q.split('&')
                    .find_map(|p| p.strip_prefix("token="))
                    .map(crate::http::percent_decode)
            })
        })
        .filter(|t| !t.is_empty())
}

pub async fn forward(AxState(shared): AxState<Arc<Shared>>, request: Request) -> Response {
    let Role::Agent { server, .. } = &shared.role else {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    };
    let (parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let token = request_token(&parts.headers, parts.uri.query())
        .or_else(|| shared.acl().and_then(|acl| acl.default_token.clone()));
    // A session made through an agent belongs to the agent's node unless the body names one.
    let body = if parts.uri.path() == "/v1/session/create" {
        let mut value: Value = if body.iter().all(|b| b.is_ascii_whitespace()) {
            Value::Object(Default::default())
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("Request decode failed: {e}"),
                    )
                        .into_response();
                }
            }
        };
        if let Value::Object(obj) = &mut value {
            let named = state::normalize_keys(Value::Object(obj.clone()))
                .get("node")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !named {
                obj.insert("Node".into(), Value::String(shared.config.node.clone()));
            }
        }
        Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
    } else {
        body
    };
    let mut outgoing = shared
        .http
        .request(parts.method.clone(), format!("{server}{path_query}"))
        .body(body);
    if let Some(token) = token {
        outgoing = outgoing.header("X-Consul-Token", token);
    }
    if let Some(ct) = parts.headers.get("Content-Type") {
        outgoing = outgoing.header("Content-Type", ct.clone());
    }
    let answer = match outgoing.send().await {
        Ok(a) => a,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rpc error: No cluster leader ({e})"),
            )
                .into_response();
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut response = (status, bytes).into_response();
    for (name, value) in headers.iter() {
        let n = name.as_str();
        if n.starts_with("x-consul-") || n == "content-type" {
            response.headers_mut().insert(
                name.clone(),
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
    }
    response
}
