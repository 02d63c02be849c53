//! The wire format of an infer request and its answer, independent of the
//! model: HTTP content coding (`Content-Encoding` / `Accept-Encoding`: gzip,
//! deflate), the KServe v2 binary tensor data extension (a JSON header of
//! `Inference-Header-Content-Length` bytes followed by raw little-endian
//! tensors sized by `binary_data_size`), the JSON request itself, and the
//! encoding of outputs (JSON arrays or binary, BYTES for classification).
//! Everything here runs on a worker thread, never on the async threads, and
//! every size is bounded by [`super::BODY_LIMIT`].

use std::fmt;
use std::io::Read;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::v2::ApiError;
use super::BODY_LIMIT;

/// The header that gives the length of the JSON part of a binary request
/// or answer.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A content coding of a request or an answer body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

/// What the async handler reads from the request headers (cheap; the body
/// itself is decoded on a worker).
#[derive(Clone, Debug)]
pub struct WireHeaders {
    /// `Content-Encoding` of the body.
    pub coding: Coding,
    /// `Inference-Header-Content-Length`: the JSON part's length, if binary.
    pub header_len: Option<usize>,
    /// The coding the answer should use (from `Accept-Encoding`).
    pub answer_coding: Coding,
}

impl WireHeaders {
    /// Read the headers that shape the body; a bad value is a 400 naming it.
    pub fn from_headers(h: &HeaderMap) -> Result<WireHeaders, ApiError> {
        let text = |name: &str| -> Result<Option<String>, ApiError> {
            match h.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim().to_ascii_lowercase()))
                    .map_err(|_| ApiError::bad(format!("header {name}: not visible ASCII text"))),
            }
        };
        let coding = match text("content-encoding")?.as_deref() {
            None | Some("") | Some("identity") => Coding::Identity,
            Some("gzip") | Some("x-gzip") => Coding::Gzip,
            Some("deflate") => Coding::Deflate,
            Some(other) => {
                return Err(ApiError::bad(format!(
                    "header Content-Encoding: `{other}` is not supported; send gzip, deflate or identity"
                )))
            }
        };
        let header_len = match text(HEADER_LENGTH)? {
            None => None,
            Some(s) => Some(s.parse::<usize>().map_err(|_| {
                ApiError::bad(format!(
                    "header Inference-Header-Content-Length: `{s}` is not a byte count"
                ))
            })?),
        };
        let answer_coding = text("accept-encoding")?
            .map(|s| accepted_coding(&s))
            .unwrap_or(Coding::Identity);
        Ok(WireHeaders {
            coding,
            header_len,
            answer_coding,
        })
    }
}

/// The coding to answer with, from an `Accept-Encoding` value: gzip if
/// accepted, else deflate, else identity (`q=0` refuses a coding).
pub fn accepted_coding(accept: &str) -> Coding {
    let mut gzip = false;
    let mut deflate = false;
    for part in accept.split(',') {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim();
        let refused = it.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        match name {
            "gzip" | "x-gzip" => gzip = true,
            "deflate" => deflate = true,
            _ => {}
        }
    }
    if gzip {
        Coding::Gzip
    } else if deflate {
        Coding::Deflate
    } else {
        Coding::Identity
    }
}

/// Undo the request's content coding; the decoded body is bounded by
/// [`BODY_LIMIT`] too (a 413 past it).
pub fn decompress(coding: Coding, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let read = |r: &mut dyn Read| -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.take(BODY_LIMIT as u64 + 1).read_to_end(&mut out)?;
        Ok(out)
    };
    let out = match coding {
        Coding::Identity => return Ok(body.to_vec()),
        Coding::Gzip => read(&mut flate2::read::MultiGzDecoder::new(body)),
        // HTTP's "deflate" is the zlib format; some clients send raw deflate.
        Coding::Deflate => read(&mut flate2::read::ZlibDecoder::new(body))
            .or_else(|_| read(&mut flate2::read::DeflateDecoder::new(body))),
    }
    .map_err(|e| {
        ApiError::bad(format!(
            "the request body is not valid {} data: {e}",
            coding.name()
        ))
    })?;
    if out.len() > BODY_LIMIT {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the decompressed request body exceeds the limit of {BODY_LIMIT} bytes"
            ),
        });
    }
    Ok(out)
}

/// Apply the answer's content coding.
pub fn compress(coding: Coding, body: Vec<u8>) -> Vec<u8> {
    use std::io::Write;
    let level = flate2::Compression::fast();
    let done = match coding {
        Coding::Identity => return body,
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(&body).and_then(|_| e.finish())
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(&body).and_then(|_| e.finish())
        }
    };
    // Writing into a Vec cannot fail; keep the plain body if it ever did.
    done.unwrap_or(body)
}

/// The header value naming `coding` (none for identity).
pub fn coding_header(coding: Coding) -> Option<HeaderValue> {
    match coding {
        Coding::Identity => None,
        c => Some(HeaderValue::from_static(c.name())),
    }
}

// ---------------------------------------------------------------------------
// The request
// ---------------------------------------------------------------------------

/// The v2 infer request (unknown keys are ignored, as the protocol allows
/// extensions).
#[derive(Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<Value>,
    pub inputs: Vec<InferInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub data: Option<Flat>,
}

#[derive(Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// The data of one input: JSON numbers, or raw bytes of the binary section.
pub enum InputData {
    Json(Vec<f64>),
    Raw(Vec<u8>),
}

/// A request with its inputs' data resolved.
pub struct Decoded {
    pub id: Option<Value>,
    pub inputs: Vec<(InferInput, InputData)>,
    pub outputs: Option<Vec<RequestedOutput>>,
    /// `parameters.binary_data_output`: every output in binary by default.
    pub binary_output: bool,
}

fn param_bool(p: &Option<serde_json::Map<String, Value>>, key: &str) -> Result<bool, String> {
    match p.as_ref().and_then(|p| p.get(key)) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{key}: {other} is not true or false")),
    }
}

/// Optional non-negative integer parameter.
pub fn param_usize(
    p: &Option<serde_json::Map<String, Value>>,
    key: &str,
) -> Result<Option<usize>, String> {
    match p.as_ref().and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{key}: {v} is not a non-negative integer")),
    }
}

/// Split a (decompressed) body into its JSON request and the inputs' data.
pub fn decode_request(body: &[u8], header_len: Option<usize>) -> Result<Decoded, ApiError> {
    let (json, mut binary) = match header_len {
        None => (body, &[][..]),
        Some(n) if n > body.len() => {
            return Err(ApiError::bad(format!(
                "Inference-Header-Content-Length: {n} bytes, past the end of the {}-byte body",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
    };
    let req: InferRequest = serde_json::from_slice(json)
        .map_err(|e| ApiError::bad(format!("invalid infer request: {e}")))?;
    let binary_output = param_bool(&req.parameters, "binary_data_output")
        .map_err(|e| ApiError::bad(format!("parameters.{e}")))?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, mut input) in req.inputs.into_iter().enumerate() {
        let size = param_usize(&input.parameters, "binary_data_size")
            .map_err(|e| ApiError::bad(format!("inputs[{i}].parameters.{e}")))?;
        let data = match (size, input.data.take()) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(format!(
                    "inputs[{i}]: both `data` and parameters.binary_data_size given; send one"
                )))
            }
            (Some(_), None) if header_len.is_none() => {
                return Err(ApiError::bad(format!(
                    "inputs[{i}].parameters.binary_data_size given but the request has no Inference-Header-Content-Length header"
                )))
            }
            (Some(n), None) => {
                if n > binary.len() {
                    return Err(ApiError::bad(format!(
                        "inputs[{i}].parameters.binary_data_size: {n} bytes, but only {} bytes of binary data remain in the body",
                        binary.len()
                    )));
                }
                let (this, rest) = binary.split_at(n);
                binary = rest;
                InputData::Raw(this.to_vec())
            }
            (None, Some(Flat(v))) => InputData::Json(v),
            (None, None) => {
                return Err(ApiError::bad(format!(
                    "inputs[{i}]: no `data` and no parameters.binary_data_size"
                )))
            }
        };
        inputs.push((input, data));
    }
    if !binary.is_empty() {
        return Err(ApiError::bad(format!(
            "{} bytes of binary data after the inputs' binary_data_size (body {} bytes, JSON header {} bytes)",
            binary.len(),
            body.len(),
            header_len.unwrap_or(0)
        )));
    }
    Ok(Decoded {
        id: req.id,
        inputs,
        outputs: req.outputs,
        binary_output,
    })
}

/// Tensor data, flat or nested arrays of numbers, flattened row-major.
pub struct Flat(pub Vec<f64>);

const MAX_NESTING: usize = 16;

struct FlatVisitor<'a> {
    out: &'a mut Vec<f64>,
    depth: usize,
}

impl<'de> Visitor<'de> for FlatVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers, as a flat or nested array")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.out.push(v);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.push(v as f64);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.push(v as f64);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth > MAX_NESTING {
            return Err(serde::de::Error::custom("`data` is nested too deeply"));
        }
        while seq
            .next_element_seed(FlatSeed {
                out: &mut *self.out,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct FlatSeed<'a> {
    out: &'a mut Vec<f64>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(FlatVisitor {
            out: self.out,
            depth: self.depth,
        })
    }
}

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flat, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(FlatVisitor {
            out: &mut out,
            depth: 0,
        })?;
        Ok(Flat(out))
    }
}

// ---------------------------------------------------------------------------
// The answer
// ---------------------------------------------------------------------------

/// The data of one output tensor.
pub enum OutputData {
    F32(Vec<f32>),
    /// BYTES elements (classification strings).
    Bytes(Vec<String>),
}

/// One output tensor of the answer.
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: OutputData,
    /// Sent in the binary section rather than as a JSON array.
    pub binary: bool,
}

/// The v2 infer response.
#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DataJson<'a> {
    F32(&'a [f32]),
    Bytes(&'a [String]),
}

/// Raw little-endian bytes of an output (BYTES: each element as a 4-byte
/// little-endian length and its bytes, as the extension specifies).
pub fn raw_bytes(d: &OutputData) -> Vec<u8> {
    match d {
        OutputData::F32(v) => v.iter().flat_map(|f| f.to_le_bytes()).collect(),
        OutputData::Bytes(v) => {
            let mut out = Vec::new();
            for s in v {
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }
            out
        }
    }
}

/// The answer's body and, when any output is binary, the JSON part's length
/// (for the `Inference-Header-Content-Length` header).
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&Value>,
    outputs: &[Output],
) -> Result<(Vec<u8>, Option<usize>), ApiError> {
    let mut binary = Vec::new();
    let mut json_outputs = Vec::with_capacity(outputs.len());
    for o in outputs {
        let datatype = match o.data {
            OutputData::F32(_) => "FP32",
            OutputData::Bytes(_) => "BYTES",
        };
        let (parameters, data) = if o.binary {
            let raw = raw_bytes(&o.data);
            let p = serde_json::json!({ "binary_data_size": raw.len() });
            binary.extend(raw);
            (Some(p), None)
        } else {
            let d = match &o.data {
                OutputData::F32(v) => DataJson::F32(v),
                OutputData::Bytes(v) => DataJson::Bytes(v),
            };
            (None, Some(d))
        };
        json_outputs.push(OutputJson {
            name: &o.name,
            datatype,
            shape: &o.shape,
            parameters,
            data,
        });
    }
    let mut body = serde_json::to_vec(&ResponseJson {
        model_name,
        model_version,
        id,
        outputs: json_outputs,
    })
    .map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("encoding the answer: {e}"),
    })?;
    if outputs.iter().any(|o| o.binary) {
        let n = body.len();
        body.extend(binary);
        Ok((body, Some(n)))
    } else {
        Ok((body, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_picks_gzip_then_deflate() {
        assert_eq!(accepted_coding("gzip, deflate"), Coding::Gzip);
        assert_eq!(accepted_coding("deflate"), Coding::Deflate);
        assert_eq!(accepted_coding("gzip;q=0, deflate"), Coding::Deflate);
        assert_eq!(accepted_coding("br"), Coding::Identity);
    }

    #[test]
    fn compress_round_trips() {
        let body = b"{\"inputs\": []}".repeat(100);
        for c in [Coding::Gzip, Coding::Deflate, Coding::Identity] {
            let z = compress(c, body.clone());
            assert_eq!(decompress(c, &z).unwrap(), body, "{c:?}");
        }
        let e = decompress(Coding::Gzip, b"not gzip").unwrap_err();
        assert!(e.message.contains("not valid gzip"), "{}", e.message);
        // A small body that inflates past the limit is refused.
        let bomb = compress(Coding::Gzip, vec![0u8; BODY_LIMIT + 1]);
        assert!(bomb.len() < BODY_LIMIT / 100);
        let e = decompress(Coding::Gzip, &bomb).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.message);
        let e = decompress(Coding::Deflate, b"neither").unwrap_err();
        assert!(e.message.contains("not valid deflate"), "{}", e.message);
    }

    #[test]
    fn binary_inputs_are_split_by_size() {
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = json.to_vec();
        body.extend(1f32.to_le_bytes());
        body.extend(2f32.to_le_bytes());
        let Ok(d) = decode_request(&body, Some(json.len())) else {
            panic!("not decoded")
        };
        match &d.inputs[0].1 {
            InputData::Raw(b) => assert_eq!(b.len(), 8),
            InputData::Json(_) => panic!("expected raw data"),
        }
        // Header length past the body, size past the binary part, leftovers.
        let Err(e) = decode_request(&body, Some(body.len() + 1)) else {
            panic!("accepted")
        };
        assert!(e.message.contains("past the end"), "{}", e.message);
        let Err(e) = decode_request(&body[..body.len() - 1], Some(json.len())) else {
            panic!("accepted")
        };
        assert!(e.message.contains("only 7 bytes"), "{}", e.message);
        let mut extra = body.clone();
        extra.push(0);
        let Err(e) = decode_request(&extra, Some(json.len())) else {
            panic!("accepted")
        };
        assert!(
            e.message.contains("1 bytes of binary data after"),
            "{}",
            e.message
        );
    }

    #[test]
    fn binary_outputs_carry_their_size() {
        let outs = [
            Output {
                name: "logits".into(),
                shape: vec![1, 2],
                data: OutputData::F32(vec![0.5, -1.0]),
                binary: true,
            },
            Output {
                name: "logits".into(),
                shape: vec![1, 1],
                data: OutputData::Bytes(vec!["0.5:0:a".into()]),
                binary: true,
            },
        ];
        let (body, n) = encode_response("m", "1", None, &outs).unwrap();
        let n = n.unwrap();
        let head: Value = serde_json::from_slice(&body[..n]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 11);
        assert_eq!(head["outputs"][1]["datatype"], "BYTES");
        assert_eq!(&body[n..n + 4], &0.5f32.to_le_bytes());
        assert_eq!(&body[n + 8..n + 12], &7u32.to_le_bytes());
        assert_eq!(body.len(), n + 8 + 11);
    }
}
