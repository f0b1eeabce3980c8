//! The hello app: a wasi:http component that answers with its greeting and the node it runs on.

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let env: std::collections::HashMap<String, String> = wasip2::cli::environment::get_environment().into_iter().collect();
        let greeting = env.get("GREETING").map(String::as_str).unwrap_or("hello");
        let node = env.get("FLUXPLANE_NODE").map(String::as_str).unwrap_or("unknown");
        let text = format!("{greeting} from {node}\n");
        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())]).unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(text.as_bytes());
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(Hello);
