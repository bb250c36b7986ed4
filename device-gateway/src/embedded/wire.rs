//! MQTT on the wire for the embedded endpoint: MQTT 3.1.1 and 5 packets, decoded and encoded by
//! rumqttc's codecs, read into and written from one protocol-neutral shape ([`Inbound`],
//! [`Outbound`]) so that the connection logic is written once.
//!
//! The reader looks at each fixed header itself before the codec does: a packet announcing more
//! than the maximum size is refused after its first few bytes, never buffered.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS as QoS4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub login: Option<(String, String)>,
    /// MQTT 5's session expiry interval, in seconds.
    pub session_expiry: Option<u32>,
}

/// What a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    Connect(Connect),
    Publish { topic: String, qos: u8, pkid: u16, payload: Bytes },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe { pkid: u16, filters: Vec<(String, u8)> },
    Unsubscribe { pkid: u16, filters: Vec<String> },
    PingReq,
    Disconnect,
    /// A packet only a server sends, or one this endpoint does not take (MQTT 5 AUTH).
    Unexpected(&'static str),
}

/// Why a CONNECT was refused, in the terms of either version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectCode {
    Accepted,
    UnsupportedProtocol,
    BadClientId,
    ServerUnavailable,
    BadCredentials,
    NotAuthorized,
}

/// How an acknowledgement judges a publish (MQTT 5 says it; 3.1.1 can only acknowledge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckReason {
    Success,
    NotAuthorized,
    PayloadFormatInvalid,
}

/// Why the server closes a connection (sent as DISCONNECT to MQTT 5 clients only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    ServerShuttingDown,
    SessionTakenOver,
    NotAuthorized,
    PacketTooLarge,
    MalformedPacket,
    ProtocolError,
    KeepAliveTimeout,
    ServerBusy,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outbound {
    ConnAck { code: ConnectCode, session_present: bool, assigned_client_id: Option<String>, session_expiry: Option<u32> },
    PubAck { pkid: u16, reason: AckReason },
    PubRec { pkid: u16, reason: AckReason },
    PubComp(u16),
    /// `None`: that filter was refused.
    SubAck { pkid: u16, granted: Vec<Option<u8>> },
    UnsubAck { pkid: u16, count: usize },
    Publish { topic: String, qos: u8, pkid: u16, dup: bool, payload: Bytes },
    PingResp,
    Disconnect(CloseReason),
}

#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client closed the connection between packets.
    Closed,
    /// A packet announced this many bytes, more than the maximum.
    TooLarge(usize),
    Malformed(String),
    /// A CONNECT of a protocol version this endpoint does not speak (MQTT 3.1 is level 3).
    UnsupportedProtocol(u8),
    Io(std::io::Error),
}

/// Reads whole packets from the connection.
pub(crate) struct PacketReader {
    read: OwnedReadHalf,
    buffer: BytesMut,
    max_packet_bytes: usize,
    version: Option<Version>,
}

impl PacketReader {
    pub fn new(read: OwnedReadHalf, max_packet_bytes: usize) -> PacketReader {
        PacketReader { read, buffer: BytesMut::with_capacity(4096), max_packet_bytes, version: None }
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The next packet. Cancel-safe: bytes already read stay in the buffer.
    pub async fn next(&mut self) -> Result<Inbound, ReadError> {
        loop {
            if let Some(packet) = self.parse()? {
                return Ok(packet);
            }
            let read = self.read.read_buf(&mut self.buffer).await.map_err(ReadError::Io)?;
            if read == 0 {
                return Err(if self.buffer.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Malformed("the connection closed in the middle of a packet".to_owned())
                });
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Inbound>, ReadError> {
        let Some((header_len, remaining)) = fixed_header(&self.buffer)? else {
            return Ok(None);
        };
        if remaining > self.max_packet_bytes {
            return Err(ReadError::TooLarge(remaining));
        }
        let frame = header_len + remaining;
        if self.buffer.len() < frame {
            self.buffer.reserve(frame - self.buffer.len());
            return Ok(None);
        }
        let version = match self.version {
            Some(version) => version,
            None => {
                let version = connect_version(&self.buffer[..frame], header_len)?;
                self.version = Some(version);
                version
            }
        };
        let max = self.max_packet_bytes;
        let packet = match version {
            Version::V311 => v4::Packet::read(&mut self.buffer, max).map(from_v4).map_err(|e| ReadError::Malformed(e.to_string()))?,
            // rumqttc's v5 reader wants a reason code in every DISCONNECT; MQTT 5 lets it be left out.
            Version::V5 if self.buffer[0] == 0xE0 && remaining == 0 => {
                let _ = self.buffer.split_to(frame);
                Inbound::Disconnect
            }
            Version::V5 => {
                let packet = v5::Packet::read(&mut self.buffer, Some(max as u32)).map_err(|e| ReadError::Malformed(e.to_string()))?;
                from_v5(packet)?
            }
        };
        Ok(Some(packet))
    }
}

/// The fixed header's length and the remaining length it announces, or `None` until enough
/// bytes are there.
fn fixed_header(buffer: &[u8]) -> Result<Option<(usize, usize)>, ReadError> {
    let mut remaining = 0usize;
    for (index, byte) in buffer.iter().skip(1).take(4).enumerate() {
        remaining += usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((index + 2, remaining)));
        }
    }
    if buffer.len() >= 5 {
        return Err(ReadError::Malformed("the remaining length takes more than 4 bytes".to_owned()));
    }
    Ok(None)
}

/// The protocol version a first packet asks for; it must be a CONNECT.
fn connect_version(frame: &[u8], header_len: usize) -> Result<Version, ReadError> {
    if frame[0] >> 4 != 1 {
        return Err(ReadError::Malformed(format!("the first packet must be CONNECT, not packet type {}", frame[0] >> 4)));
    }
    let header = &frame[header_len..];
    let name_len = match header {
        [high, low, ..] => usize::from(*high) << 8 | usize::from(*low),
        _ => return Err(ReadError::Malformed("CONNECT too short".to_owned())),
    };
    let (name, level) = (header.get(2..2 + name_len), header.get(2 + name_len));
    match (name, level) {
        (Some(b"MQTT"), Some(4)) => Ok(Version::V311),
        (Some(b"MQTT"), Some(5)) => Ok(Version::V5),
        (Some(_), Some(level)) => Err(ReadError::UnsupportedProtocol(*level)),
        _ => Err(ReadError::Malformed("CONNECT too short".to_owned())),
    }
}

fn from_v4(packet: v4::Packet) -> Inbound {
    match packet {
        v4::Packet::Connect(connect) => Inbound::Connect(Connect {
            client_id: connect.client_id,
            clean_start: connect.clean_session,
            keep_alive: connect.keep_alive,
            login: connect.login.map(|login| (login.username, login.password)),
            session_expiry: None,
        }),
        v4::Packet::Publish(publish) => {
            Inbound::Publish { topic: publish.topic, qos: publish.qos as u8, pkid: publish.pkid, payload: publish.payload }
        }
        v4::Packet::PubAck(ack) => Inbound::PubAck(ack.pkid),
        v4::Packet::PubRec(rec) => Inbound::PubRec(rec.pkid),
        v4::Packet::PubRel(rel) => Inbound::PubRel(rel.pkid),
        v4::Packet::PubComp(comp) => Inbound::PubComp(comp.pkid),
        v4::Packet::Subscribe(subscribe) => Inbound::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe.filters.into_iter().map(|filter| (filter.path, filter.qos as u8)).collect(),
        },
        v4::Packet::Unsubscribe(unsubscribe) => Inbound::Unsubscribe { pkid: unsubscribe.pkid, filters: unsubscribe.topics },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect,
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    }
}

fn from_v5(packet: v5::Packet) -> Result<Inbound, ReadError> {
    Ok(match packet {
        v5::Packet::Connect(connect, _will, login) => Inbound::Connect(Connect {
            client_id: connect.client_id,
            clean_start: connect.clean_start,
            keep_alive: connect.keep_alive,
            login: login.map(|login| (login.username, login.password)),
            session_expiry: connect.properties.and_then(|properties| properties.session_expiry_interval),
        }),
        v5::Packet::Publish(publish) => {
            if publish.topic.is_empty() {
                return Err(ReadError::Malformed("topic aliases are not supported: name the topic".to_owned()));
            }
            let topic = String::from_utf8(publish.topic.to_vec()).map_err(|_| ReadError::Malformed("the topic is not UTF-8".to_owned()))?;
            Inbound::Publish { topic, qos: publish.qos as u8, pkid: publish.pkid, payload: publish.payload }
        }
        v5::Packet::PubAck(ack) => Inbound::PubAck(ack.pkid),
        v5::Packet::PubRec(rec) => Inbound::PubRec(rec.pkid),
        v5::Packet::PubRel(rel) => Inbound::PubRel(rel.pkid),
        v5::Packet::PubComp(comp) => Inbound::PubComp(comp.pkid),
        v5::Packet::Subscribe(subscribe) => Inbound::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe.filters.into_iter().map(|filter| (filter.path, filter.qos as u8)).collect(),
        },
        v5::Packet::Unsubscribe(unsubscribe) => Inbound::Unsubscribe { pkid: unsubscribe.pkid, filters: unsubscribe.filters },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(_) => Inbound::Disconnect,
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    })
}

/// Encodes packets for one connection and writes them out.
pub(crate) struct PacketWriter {
    write: OwnedWriteHalf,
    buffer: BytesMut,
    version: Version,
    max_packet_bytes: usize,
}

impl PacketWriter {
    pub fn new(write: OwnedWriteHalf, version: Version, max_packet_bytes: usize) -> PacketWriter {
        PacketWriter { write, buffer: BytesMut::with_capacity(1024), version, max_packet_bytes }
    }

    /// Encodes `packet` behind whatever is queued. A packet that cannot be encoded (a command
    /// larger than the maximum) is an error and is left out.
    pub fn queue(&mut self, packet: Outbound) -> Result<(), String> {
        match self.version {
            Version::V311 => match to_v4(packet) {
                Some(packet) => packet.write(&mut self.buffer, self.max_packet_bytes).map(drop).map_err(|e| e.to_string()),
                None => Ok(()),
            },
            Version::V5 => to_v5(packet, self.max_packet_bytes)
                .write(&mut self.buffer, Some(self.max_packet_bytes as u32))
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    pub fn has_queued(&self) -> bool {
        !self.buffer.is_empty()
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            let bytes = self.buffer.split();
            self.write.write_all(&bytes).await?;
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.write.shutdown().await;
    }
}

fn qos4(qos: u8) -> QoS4 {
    if qos == 0 {
        QoS4::AtMostOnce
    } else {
        QoS4::AtLeastOnce
    }
}

fn qos5(qos: u8) -> QoS5 {
    if qos == 0 {
        QoS5::AtMostOnce
    } else {
        QoS5::AtLeastOnce
    }
}

fn to_v4(packet: Outbound) -> Option<v4::Packet> {
    Some(match packet {
        Outbound::ConnAck { code, session_present, .. } => {
            let code = match code {
                ConnectCode::Accepted => v4::ConnectReturnCode::Success,
                ConnectCode::UnsupportedProtocol => v4::ConnectReturnCode::RefusedProtocolVersion,
                ConnectCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                ConnectCode::ServerUnavailable => v4::ConnectReturnCode::ServiceUnavailable,
                ConnectCode::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
                ConnectCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
            };
            v4::Packet::ConnAck(v4::ConnAck::new(code, session_present))
        }
        Outbound::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(pkid)),
        Outbound::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec::new(pkid)),
        Outbound::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(pkid)),
        Outbound::SubAck { pkid, granted } => {
            let codes = granted
                .into_iter()
                .map(|qos| qos.map_or(v4::SubscribeReasonCode::Failure, |qos| v4::SubscribeReasonCode::Success(qos4(qos))))
                .collect();
            v4::Packet::SubAck(v4::SubAck::new(pkid, codes))
        }
        Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
        Outbound::Publish { topic, qos, pkid, dup, payload } => {
            v4::Packet::Publish(v4::Publish { dup, qos: qos4(qos), retain: false, topic, pkid: if qos == 0 { 0 } else { pkid }, payload })
        }
        Outbound::PingResp => v4::Packet::PingResp,
        // MQTT 3.1.1 has no server DISCONNECT: closing the connection says it.
        Outbound::Disconnect(_) => return None,
    })
}

fn to_v5(packet: Outbound, max_packet_bytes: usize) -> v5::Packet {
    match packet {
        Outbound::ConnAck { code, session_present, assigned_client_id, session_expiry } => {
            let accepted = code == ConnectCode::Accepted;
            let code = match code {
                ConnectCode::Accepted => v5::ConnectReturnCode::Success,
                ConnectCode::UnsupportedProtocol => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                ConnectCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                ConnectCode::ServerUnavailable => v5::ConnectReturnCode::ServerUnavailable,
                ConnectCode::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
                ConnectCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
            };
            let properties = accepted.then(|| v5::ConnAckProperties {
                session_expiry_interval: session_expiry,
                receive_max: None,
                max_qos: None,
                retain_available: Some(0),
                max_packet_size: Some(max_packet_bytes as u32),
                assigned_client_identifier: assigned_client_id,
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            });
            v5::Packet::ConnAck(v5::ConnAck { session_present, code, properties })
        }
        Outbound::PubAck { pkid, reason } => {
            let reason = match reason {
                AckReason::Success => v5::PubAckReason::Success,
                AckReason::NotAuthorized => v5::PubAckReason::NotAuthorized,
                AckReason::PayloadFormatInvalid => v5::PubAckReason::PayloadFormatInvalid,
            };
            v5::Packet::PubAck(v5::PubAck { pkid, reason, properties: None })
        }
        Outbound::PubRec { pkid, reason } => {
            let reason = match reason {
                AckReason::Success => v5::PubRecReason::Success,
                AckReason::NotAuthorized => v5::PubRecReason::NotAuthorized,
                AckReason::PayloadFormatInvalid => v5::PubRecReason::PayloadFormatInvalid,
            };
            v5::Packet::PubRec(v5::PubRec { pkid, reason, properties: None })
        }
        Outbound::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(pkid, None)),
        Outbound::SubAck { pkid, granted } => {
            let return_codes = granted
                .into_iter()
                .map(|qos| qos.map_or(v5::SubscribeReasonCode::NotAuthorized, |qos| v5::SubscribeReasonCode::Success(qos5(qos))))
                .collect();
            v5::Packet::SubAck(v5::SubAck { pkid, return_codes, properties: None })
        }
        Outbound::UnsubAck { pkid, count } => {
            v5::Packet::UnsubAck(v5::UnsubAck { pkid, reasons: vec![v5::UnsubAckReason::Success; count], properties: None })
        }
        Outbound::Publish { topic, qos, pkid, dup, payload } => v5::Packet::Publish(v5::Publish {
            dup,
            qos: qos5(qos),
            retain: false,
            topic: Bytes::from(topic),
            pkid: if qos == 0 { 0 } else { pkid },
            payload,
            properties: None,
        }),
        Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outbound::Disconnect(reason) => {
            use v5::DisconnectReasonCode as Code;
            let (code, why) = match reason {
                CloseReason::ServerShuttingDown => (Code::ServerShuttingDown, "the hub is shutting down"),
                CloseReason::SessionTakenOver => (Code::SessionTakenOver, "another connection took over this session"),
                CloseReason::NotAuthorized => (Code::NotAuthorized, "the device was deactivated"),
                CloseReason::PacketTooLarge => (Code::PacketTooLarge, "a packet was larger than the maximum packet size"),
                CloseReason::MalformedPacket => (Code::MalformedPacket, "a packet was malformed"),
                CloseReason::ProtocolError => (Code::ProtocolError, "a packet broke the protocol"),
                CloseReason::KeepAliveTimeout => (Code::KeepAliveTimeout, "nothing arrived within 1.5 keep-alive periods"),
                CloseReason::ServerBusy => (Code::ServerBusy, "the hub cannot take messages now; unacknowledged ones will be taken on reconnect"),
            };
            // rumqttc's writer frames a reason code right only with non-empty properties; a
            // reason string is worth sending anyway.
            let properties =
                v5::DisconnectProperties { session_expiry_interval: None, reason_string: Some(why.to_owned()), user_properties: Vec::new(), server_reference: None };
            v5::Packet::Disconnect(v5::Disconnect { reason_code: code, properties: Some(properties) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_headers_are_read_before_the_body_arrives() {
        assert_eq!(fixed_header(&[0x30]).unwrap(), None);
        assert_eq!(fixed_header(&[0x30, 0x7F]).unwrap(), Some((2, 127)));
        assert_eq!(fixed_header(&[0x30, 0x80, 0x01]).unwrap(), Some((3, 128)));
        // A 1 MB publish is known to be 1 MB from its first four bytes.
        assert_eq!(fixed_header(&[0x30, 0x80, 0x80, 0x40]).unwrap(), Some((4, 1 << 20)));
        assert!(fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }

    #[test]
    fn the_first_packet_names_the_protocol() {
        let mut v4_connect = BytesMut::new();
        v4::Connect::new("unit-7").write(&mut v4_connect).unwrap();
        assert_eq!(connect_version(&v4_connect, 2).unwrap(), Version::V311);
        let mut v5_connect = v4_connect.to_vec();
        v5_connect[8] = 5;
        assert_eq!(connect_version(&v5_connect, 2).unwrap(), Version::V5);
        let mqtt31 = [0x10, 0x0C, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0x00, 0x3C];
        assert!(matches!(connect_version(&mqtt31, 2), Err(ReadError::UnsupportedProtocol(3))));
        assert!(matches!(connect_version(&[0x30, 0x00], 2), Err(ReadError::Malformed(_))));
    }

    /// Every packet the endpoint sends is exactly as long as its header says, in both versions
    /// (a miscount desynchronises the client's reader for the rest of the connection).
    #[test]
    fn outbound_packets_are_framed_exactly_in_both_versions() {
        let mut packets = vec![
            Outbound::ConnAck { code: ConnectCode::Accepted, session_present: true, assigned_client_id: Some("x".into()), session_expiry: Some(60) },
            Outbound::PubComp(3),
            Outbound::SubAck { pkid: 8, granted: vec![Some(1), None, Some(0)] },
            Outbound::UnsubAck { pkid: 8, count: 2 },
            Outbound::Publish { topic: "medhub/a/ambulance/u/cmd".into(), qos: 1, pkid: 9, dup: true, payload: Bytes::from_static(b"{}") },
            Outbound::Publish { topic: "medhub/a/ambulance/u/cmd".into(), qos: 0, pkid: 0, dup: false, payload: Bytes::from(vec![b'x'; 300]) },
            Outbound::PingResp,
        ];
        for code in [ConnectCode::UnsupportedProtocol, ConnectCode::BadClientId, ConnectCode::ServerUnavailable, ConnectCode::BadCredentials, ConnectCode::NotAuthorized] {
            packets.push(Outbound::ConnAck { code, session_present: false, assigned_client_id: None, session_expiry: None });
        }
        for reason in [AckReason::Success, AckReason::NotAuthorized, AckReason::PayloadFormatInvalid] {
            packets.push(Outbound::PubAck { pkid: 7, reason });
            packets.push(Outbound::PubRec { pkid: 7, reason });
        }
        for reason in [
            CloseReason::ServerShuttingDown,
            CloseReason::SessionTakenOver,
            CloseReason::NotAuthorized,
            CloseReason::PacketTooLarge,
            CloseReason::MalformedPacket,
            CloseReason::ProtocolError,
            CloseReason::KeepAliveTimeout,
            CloseReason::ServerBusy,
        ] {
            packets.push(Outbound::Disconnect(reason));
        }
        let framed = |buffer: &BytesMut, what: &str| {
            let (header, remaining) = fixed_header(buffer).unwrap().unwrap();
            assert_eq!(header + remaining, buffer.len(), "{what}: {buffer:02x?}");
        };
        for packet in packets {
            let mut buffer = BytesMut::new();
            if let Some(v4) = to_v4(packet.clone()) {
                v4.write(&mut buffer, 1024).unwrap();
                framed(&buffer, &format!("3.1.1 {packet:?}"));
            }
            let mut buffer = BytesMut::new();
            let v5 = to_v5(packet.clone(), 1024);
            v5.write(&mut buffer, Some(1024)).unwrap();
            framed(&buffer, &format!("5 {packet:?}"));
            // And the client's own reader takes it back as it was meant.
            assert_eq!(v5::Packet::read(&mut buffer, Some(1024)).map_err(|e| format!("{packet:?}: {e}")).unwrap(), v5, "{packet:?}");
        }
    }
}
