//! Consul's DNS interface, the parts services use to find each other (`agent/dns.go`):
//! `<service>.service.consul` and `<tag>.<service>.service.consul` answer A records (and SRV
//! records with the port) for **passing** instances only; `<node>.node.consul` the node's address;
//! `<hex ip>.addr.consul` the address an SRV target names. An unknown `.consul` name is NXDOMAIN;
//! any other name is REFUSED (a real agent would recurse only with `recursors` set).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Role, Shared};

/// What a name under `.consul` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Service { name: String, tag: Option<String> },
    Node(String),
    Addr(Ipv4Addr),
}

/// Parses a query name; `Err(true)`: a `.consul` name we do not know (NXDOMAIN), `Err(false)`:
/// not ours at all (REFUSED).
pub fn parse_name(name: &str) -> Result<Lookup, bool> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(rest) = name.strip_suffix(".consul") else {
        return Err(false);
    };
    let mut labels: Vec<&str> = rest.split('.').collect();
    // An optional datacenter label: `web.service.dc1.consul`.
    if labels.len() >= 2 && labels[labels.len() - 1] == "dc1" {
        labels.pop();
    }
    match labels.as_slice() {
        [service, "service"] => Ok(Lookup::Service {
            name: service.trim_start_matches('_').to_string(),
            tag: None,
        }),
        [tag, service, "service"] => Ok(Lookup::Service {
            name: service.trim_start_matches('_').to_string(),
            tag: Some(tag.trim_start_matches('_').to_string()),
        }),
        [node, "node"] => Ok(Lookup::Node(node.to_string())),
        [hex, "addr"] if hex.len() == 8 => u32::from_str_radix(hex, 16)
            .map(|n| Lookup::Addr(Ipv4Addr::from(n)))
            .map_err(|_| true),
        _ => Err(true),
    }
}

/// One passing instance: node name, address (the service's, else the node's), port.
#[derive(Debug, Clone)]
struct Instance {
    node: String,
    node_address: String,
    address: String,
    port: u16,
}

async fn server_get(shared: &Shared, path: &str) -> Result<Option<Value>, String> {
    let Role::Agent { server, .. } = &shared.role else {
        return Err("not an agent".into());
    };
    let mut request = shared
        .http
        .get(format!("{server}{path}"))
        .timeout(Duration::from_secs(5));
    if let Some(token) = shared.acl().and_then(|a| a.default_token.clone()) {
        request = request.header("X-Consul-Token", token);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if response.status().as_u16() == 404 {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(format!("server answered {}", response.status()));
    }
    response.json().await.map(Some).map_err(|e| e.to_string())
}

async fn passing(shared: &Shared, name: &str, tag: Option<&str>) -> Result<Vec<Instance>, String> {
    let mut path = format!("/v1/health/service/{name}?passing=1");
    if let Some(tag) = tag {
        path.push_str(&format!("&tag={tag}"));
    }
    let entries = server_get(shared, &path).await?.unwrap_or(Value::Null);
    let mut out = Vec::new();
    for e in entries.as_array().into_iter().flatten() {
        let node_address = e["Node"]["Address"].as_str().unwrap_or("").to_string();
        let address = e["Service"]["Address"]
            .as_str()
            .filter(|a| !a.is_empty())
            .unwrap_or(&node_address)
            .to_string();
        out.push(Instance {
            node: e["Node"]["Node"].as_str().unwrap_or("").to_string(),
            node_address,
            address,
            port: e["Service"]["Port"].as_u64().unwrap_or(0) as u16,
        });
    }
    Ok(out)
}

fn a_record(name: &Name, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name.clone(), 0, RData::A(A(ip)))
}

fn fqdn(text: &str) -> Option<Name> {
    let mut name = Name::from_ascii(text).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// Answers one DNS message.
pub(crate) async fn answer(shared: &Shared, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    response.add_queries(request.queries.iter().cloned());
    if request.metadata.message_type != MessageType::Query
        || request.metadata.op_code != OpCode::Query
    {
        response.metadata.response_code = ResponseCode::NotImp;
        return response;
    }
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let qname = query.name().clone();
    let qtype = query.query_type();
    let lookup = match parse_name(&qname.to_ascii()) {
        Ok(l) => l,
        Err(ours) => {
            response.metadata.response_code = if ours {
                ResponseCode::NXDomain
            } else {
                ResponseCode::Refused
            };
            return response;
        }
    };
    let wants_a = matches!(qtype, RecordType::A | RecordType::ANY);
    match lookup {
        Lookup::Addr(ip) => {
            if wants_a {
                response.add_answer(a_record(&qname, ip));
            }
        }
        Lookup::Node(node) => match server_get(shared, "/v1/catalog/nodes").await {
            Ok(nodes) => {
                let address = nodes
                    .as_ref()
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|n| n["Node"].as_str().map(str::to_ascii_lowercase) == Some(node.clone()))
                    .and_then(|n| n["Address"].as_str()?.parse::<Ipv4Addr>().ok());
                match address {
                    Some(ip) if wants_a => {
                        response.add_answer(a_record(&qname, ip));
                    }
                    Some(_) => {}
                    None => response.metadata.response_code = ResponseCode::NXDomain,
                }
            }
            Err(_) => response.metadata.response_code = ResponseCode::ServFail,
        },
        Lookup::Service { name, tag } => match passing(shared, &name, tag.as_deref()).await {
            Err(_) => response.metadata.response_code = ResponseCode::ServFail,
            Ok(instances) if instances.is_empty() => {
                response.metadata.response_code = ResponseCode::NXDomain
            }
            Ok(instances) => {
                for i in &instances {
                    let Ok(ip) = i.address.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    if wants_a {
                        response.add_answer(a_record(&qname, ip));
                    } else if qtype == RecordType::SRV {
                        // The node's name when the instance lives at the node's address,
                        // else the address itself, as Consul names SRV targets.
                        let target = if i.address == i.node_address && !i.node.is_empty() {
                            format!("{}.node.dc1.consul.", i.node)
                        } else {
                            format!("{:08x}.addr.dc1.consul.", u32::from(ip))
                        };
                        let Some(target) = fqdn(&target) else {
                            continue;
                        };
                        response.add_answer(Record::from_rdata(
                            qname.clone(),
                            0,
                            RData::SRV(SRV::new(1, 1, i.port, target.clone())),
                        ));
                        response.additionals.push(a_record(&target, ip));
                    }
                }
            }
        },
    }
    response
}

async fn handle(shared: &Shared, bytes: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(bytes).ok()?;
    answer(shared, &request).await.to_vec().ok()
}

/// Serves DNS on `addr` over UDP and TCP; returns the address bound and the tasks.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: &watch::Sender<bool>,
) -> anyhow::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
    let udp = tokio::net::UdpSocket::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot answer DNS on udp {addr}: {e}"))?;
    let bound = udp.local_addr()?;
    let tcp = tokio::net::TcpListener::bind(bound)
        .await
        .map_err(|e| anyhow::anyhow!("cannot answer DNS on tcp {bound}: {e}"))?;
    let udp = Arc::new(udp);
    let mut tasks = Vec::new();
    {
        let shared = shared.clone();
        let mut stopped = stop.subscribe();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    r = udp.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                    _ = crate::stopped(&mut stopped) => return,
                };
                let bytes = buf[..n].to_vec();
                let (shared, udp) = (shared.clone(), udp.clone());
                tokio::spawn(async move {
                    if let Some(mut out) = handle(&shared, &bytes).await {
                        if out.len() > 512
                            && let Ok(m) = Message::from_vec(&out)
                        {
                            out = m.truncate().to_vec().unwrap_or(out);
                        }
                        let _ = udp.send_to(&out, peer).await;
                    }
                });
            }
        }));
    }
    {
        let mut stopped = stop.subscribe();
        tasks.push(tokio::spawn(async move {
            loop {
                let (mut conn, _) = tokio::select! {
                    r = tcp.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = crate::stopped(&mut stopped) => return,
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = conn.read_u16().await else {
                            return;
                        };
                        let mut bytes = vec![0u8; len as usize];
                        if conn.read_exact(&mut bytes).await.is_err() {
                            return;
                        }
                        let Some(out) = handle(&shared, &bytes).await else {
                            return;
                        };
                        if conn.write_u16(out.len() as u16).await.is_err()
                            || conn.write_all(&out).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        }));
    }
    Ok((bound, tasks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_name("Web.service.consul."),
            Ok(Lookup::Service {
                name: "web".into(),
                tag: None
            })
        );
        assert_eq!(
            parse_name("v2.web.service.dc1.consul"),
            Ok(Lookup::Service {
                name: "web".into(),
                tag: Some("v2".into())
            })
        );
        assert_eq!(parse_name("h1.node.consul"), Ok(Lookup::Node("h1".into())));
        assert_eq!(
            parse_name("0ad20102.addr.dc1.consul."),
            Ok(Lookup::Addr(Ipv4Addr::new(10, 210, 1, 2)))
        );
        assert_eq!(parse_name("what.consul"), Err(true));
        assert_eq!(parse_name("example.com."), Err(false));
    }
}
