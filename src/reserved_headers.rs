//! The request headers the cluster header must not be (checked by `plan`, expressed in the JSON
//! Schema by `config`).

const FRAMING: &str = "it frames the request or controls the connection";
const BODY: &str = "it describes the request body";
const CREDENTIALS: &str = "it carries the client's credentials or cookies";
const FORWARDING: &str = "it identifies the client or the request to Envoy and upstreams";

/// Request headers the cluster header must not be, with the reason. The filter overwrites the
/// cluster header on every request (and removes it for unknown services), so any header that
/// means something to Envoy, to the upstream or to the HTTP exchange itself would be destroyed.
pub const RESERVED_HEADERS: &[(&str, &str)] = &[
    ("host", "it is the request's authority"),
    ("content-length", FRAMING),
    ("transfer-encoding", FRAMING),
    ("te", FRAMING),
    ("trailer", FRAMING),
    ("connection", FRAMING),
    ("keep-alive", FRAMING),
    ("proxy-connection", FRAMING),
    ("upgrade", FRAMING),
    ("expect", FRAMING),
    ("http2-settings", FRAMING),
    ("content-type", BODY),
    ("content-encoding", BODY),
    ("authorization", CREDENTIALS),
    ("proxy-authorization", CREDENTIALS),
    ("cookie", CREDENTIALS),
    ("x-forwarded-for", FORWARDING),
    ("x-forwarded-proto", FORWARDING),
    ("x-forwarded-host", FORWARDING),
    ("x-forwarded-port", FORWARDING),
    ("forwarded", FORWARDING),
    ("via", FORWARDING),
    ("x-request-id", FORWARDING),
];
