//! The fixed newstyle handshake: greeting, client flags, then option
//! haggling until the client picks the export (`NBD_OPT_EXPORT_NAME` or
//! `NBD_OPT_GO`) or gives up (`NBD_OPT_ABORT`, or closing the socket).
//!
//! On the way the client may turn on structured replies
//! (`NBD_OPT_STRUCTURED_REPLY`) and then select the `base:allocation`
//! metadata context ([`super::meta`]), which `NBD_CMD_BLOCK_STATUS` needs.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::consts::*;
use super::meta::MetaRequest;
use super::{read_exact_or_eof, NbdError, NbdOptions};
use crate::device::BlockDevice;

/// What the transmission phase needs to know about the chosen export.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Export {
    /// Size in bytes, as announced to the client.
    pub(crate) size: u64,
    /// Transmission flags, as announced to the client.
    pub(crate) flags: u16,
    /// Structured replies were negotiated.
    pub(crate) structured: bool,
    /// `base:allocation` was selected: BLOCK_STATUS is allowed.
    pub(crate) allocation: bool,
    /// Offsets and lengths of data commands must be multiples of this
    /// (announced in `NBD_INFO_BLOCK_SIZE`; 1: any).
    pub(crate) min_block: u32,
}

impl Export {
    /// True if the client was told the export is read-only.
    pub(crate) fn read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }
}

/// How the negotiation ended without error.
#[derive(Debug)]
pub(crate) enum Negotiated {
    /// The client chose the export: enter transmission.
    Transmission(Export),
    /// The client aborted or went away.
    Closed,
}

/// Runs the server side of the handshake on `stream`.
pub(crate) async fn negotiate<S, D>(
    stream: &mut S,
    device: &D,
    options: &NbdOptions,
) -> Result<Negotiated, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: BlockDevice,
{
    let mut greeting = BytesMut::with_capacity(18);
    greeting.put_u64(NBDMAGIC);
    greeting.put_u64(IHAVEOPT);
    greeting.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    stream.write_all(&greeting).await?;
    stream.flush().await?;

    let mut flags = [0u8; 4];
    if !read_exact_or_eof(stream, &mut flags).await? {
        return Ok(Negotiated::Closed);
    }
    let client_flags = u32::from_be_bytes(flags);
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::ClientFlags(client_flags));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;
    let mut allocation = false;

    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; 16];
        if !read_exact_or_eof(stream, &mut header).await? {
            return Ok(Negotiated::Closed);
        }
        let mut h = &header[..];
        let magic = h.get_u64();
        let option = h.get_u32();
        let len = h.get_u32();
        if magic != IHAVEOPT {
            return Err(NbdError::BadMagic {
                what: "option",
                found: magic,
            });
        }
        if len > MAX_OPTION_LEN {
            if option != OPT_EXPORT_NAME {
                let msg = format!("option data of {len} bytes exceeds {MAX_OPTION_LEN}");
                reply(stream, option, REP_ERR_TOO_BIG, msg.as_bytes()).await?;
            }
            return Err(NbdError::OptionTooLarge {
                option,
                len,
                max: MAX_OPTION_LEN,
            });
        }
        // `len` is bounded above, so this allocation is too.
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data).await?;
        debug!(option, len, "nbd: option");

        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                if !name_matches(options, &data) {
                    return Err(NbdError::UnknownExport(name));
                }
                let export = export_of(device, options, structured, allocation);
                let mut out = BytesMut::with_capacity(10 + 124);
                out.put_u64(export.size);
                out.put_u16(export.flags);
                if !no_zeroes {
                    out.put_bytes(0, 124);
                }
                stream.write_all(&out).await?;
                stream.flush().await?;
                return Ok(Negotiated::Transmission(export));
            }
            OPT_ABORT => {
                // The client may already have closed: that is fine.
                let _ = reply(stream, option, REP_ACK, &[]).await;
                return Ok(Negotiated::Closed);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply(
                        stream,
                        option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_LIST takes no data",
                    )
                    .await?;
                    continue;
                }
                let name = options.export_name.as_bytes();
                let mut server = BytesMut::with_capacity(4 + name.len());
                server.put_u32(len_u32(name.len()));
                server.put_slice(name);
                reply(stream, option, REP_SERVER, &server).await?;
                reply(stream, option, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some(request) = parse_info_request(&data) else {
                    reply(stream, option, REP_ERR_INVALID, b"malformed info request").await?;
                    continue;
                };
                if !name_matches(options, &request.name) {
                    let msg = format!(
                        "unknown export {:?}",
                        String::from_utf8_lossy(&request.name)
                    );
                    reply(stream, option, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
                    continue;
                }
                let export = export_of(device, options, structured, allocation);
                let mut info = BytesMut::with_capacity(12);
                info.put_u16(INFO_EXPORT);
                info.put_u64(export.size);
                info.put_u16(export.flags);
                reply(stream, option, REP_INFO, &info).await?;
                if request.wants(INFO_NAME) {
                    let name = options.export_name.as_bytes();
                    let mut info = BytesMut::with_capacity(2 + name.len());
                    info.put_u16(INFO_NAME);
                    info.put_slice(name);
                    reply(stream, option, REP_INFO, &info).await?;
                }
                // Sent whether asked for or not, as the protocol allows: it
                // tells the client the alignment needed and the largest
                // payload accepted.
                let mut info = BytesMut::with_capacity(14);
                info.put_u16(INFO_BLOCK_SIZE);
                info.put_u32(export.min_block);
                info.put_u32(export.min_block.max(PREFERRED_BLOCK_SIZE));
                info.put_u32(MAX_PAYLOAD);
                reply(stream, option, REP_INFO, &info).await?;
                reply(stream, option, REP_ACK, &[]).await?;
                if option == OPT_GO {
                    return Ok(Negotiated::Transmission(export));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    let msg = b"NBD_OPT_STRUCTURED_REPLY takes no data";
                    reply(stream, option, REP_ERR_INVALID, msg).await?;
                    continue;
                }
                structured = true;
                reply(stream, option, REP_ACK, &[]).await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let list = option == OPT_LIST_META_CONTEXT;
                if !structured {
                    let msg = b"negotiate NBD_OPT_STRUCTURED_REPLY first";
                    reply(stream, option, REP_ERR_INVALID, msg).await?;
                    continue;
                }
                let Some(request) = MetaRequest::parse(&data) else {
                    let msg = b"malformed meta context request";
                    reply(stream, option, REP_ERR_INVALID, msg).await?;
                    continue;
                };
                if !name_matches(options, &request.name) {
                    let msg = format!(
                        "unknown export {:?}",
                        String::from_utf8_lossy(&request.name)
                    );
                    reply(stream, option, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
                    continue;
                }
                let contexts = request.matches(list);
                if !list {
                    allocation = !contexts.is_empty();
                }
                for context in contexts {
                    // LIST answers with id 0, as the protocol asks.
                    let id = if list { 0 } else { META_BASE_ALLOCATION_ID };
                    let mut out = BytesMut::with_capacity(4 + context.len());
                    out.put_u32(id);
                    out.put_slice(context.as_bytes());
                    reply(stream, option, REP_META_CONTEXT, &out).await?;
                }
                reply(stream, option, REP_ACK, &[]).await?;
            }
            _ => {
                // Includes STARTTLS and EXTENDED_HEADERS, which clients
                // probe first.
                let msg = format!("option {option} is not supported");
                reply(stream, option, REP_ERR_UNSUP, msg.as_bytes()).await?;
            }
        }
    }
    Err(NbdError::TooManyOptions(MAX_OPTIONS))
}

/// The export as it stands now, with what was negotiated so far.
fn export_of<D: BlockDevice>(
    device: &D,
    options: &NbdOptions,
    structured: bool,
    allocation: bool,
) -> Export {
    let mut flags =
        FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_CAN_MULTI_CONN | FLAG_SEND_CACHE;
    if device.read_only() || options.read_only {
        flags |= FLAG_READ_ONLY;
    } else {
        flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    }
    // A power of two within what the protocol allows; a device needing
    // more than 64 KiB alignment would be refused every request anyway.
    let min_block = device
        .min_block_size()
        .clamp(MIN_BLOCK_SIZE, MAX_MIN_BLOCK_SIZE)
        .next_power_of_two();
    Export {
        size: device.size(),
        flags,
        structured,
        allocation: structured && allocation,
        min_block,
    }
}

/// True if `name` is the configured export or the empty default name.
fn name_matches(options: &NbdOptions, name: &[u8]) -> bool {
    name.is_empty() || name == options.export_name.as_bytes()
}

/// Lengths here are bounded by [`MAX_OPTION_LEN`] or by a configured name;
/// saturate rather than wrap if a huge name was configured.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
struct InfoRequest {
    name: Bytes,
    requests: Vec<u16>,
}

impl InfoRequest {
    fn wants(&self, info: u16) -> bool {
        self.requests.contains(&info)
    }
}

/// Parses `u32 name length, name, u16 count, count × u16`; `None` if the
/// lengths do not add up to exactly `data`.
fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    let mut d = data;
    if d.remaining() < 4 {
        return None;
    }
    let name_len = usize::try_from(d.get_u32()).ok()?;
    if d.remaining() < name_len {
        return None;
    }
    let name = d.copy_to_bytes(name_len);
    if d.remaining() < 2 {
        return None;
    }
    let count = usize::from(d.get_u16());
    if d.remaining() != count.checked_mul(2)? {
        return None;
    }
    let requests = (0..count).map(|_| d.get_u16()).collect();
    Some(InfoRequest { name, requests })
}

/// Sends one option reply.
async fn reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(20 + data.len());
    out.put_u64(OPTION_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(kind);
    out.put_u32(len_u32(data.len()));
    out.put_slice(data);
    stream.write_all(&out).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_parses_and_rejects_inconsistent_lengths() {
        let mut ok = BytesMut::new();
        ok.put_u32(3);
        ok.put_slice(b"vol");
        ok.put_u16(2);
        ok.put_u16(INFO_NAME);
        ok.put_u16(INFO_BLOCK_SIZE);
        let parsed = parse_info_request(&ok);
        assert!(parsed.as_ref().is_some_and(|r| &r.name[..] == b"vol"));
        assert!(parsed.is_some_and(|r| r.wants(INFO_NAME) && !r.wants(INFO_DESCRIPTION)));

        // Every truncation, and a trailing byte, is refused.
        for cut in 0..ok.len() {
            assert!(parse_info_request(&ok[..cut]).is_none(), "cut {cut}");
        }
        let mut long = ok.clone();
        long.put_u8(0);
        assert!(parse_info_request(&long).is_none());

        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        assert!(parse_info_request(&huge).is_none());
    }
}
