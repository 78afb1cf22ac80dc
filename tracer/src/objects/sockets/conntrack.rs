//! Where an address-translated TCP connection really goes: one conntrack lookup
//! (NETLINK_NETFILTER, ctnetlink's IPCTNL_MSG_CT_GET) by the tuple its packets leave with,
//! whose reply tuple names the address they come back from. A connection to a published
//! container port or a Kubernetes service address is rewritten (DNAT) on its way: no
//! socket on the host has the address its client sees, while the reply tuple is the
//! server socket's own.
//!
//! Kernel side: include/uapi/linux/netfilter/nfnetlink_conntrack.h and
//! net/netfilter/nf_conntrack_netlink.c (`ctnetlink_get_conntrack`). No crate covers
//! ctnetlink, so the few attributes a lookup needs are encoded here.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable as _, NLA_F_NESTED, NLA_HEADER_SIZE, NLA_TYPE_MASK,
    NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, NlasIterator,
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::netlink::{NetlinkChannel, NetlinkError};

/// `NFNL_SUBSYS_CTNETLINK`, the high byte of a conntrack message's type.
const SUBSYSTEM_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW` (what the kernel answers a lookup with) and `IPCTNL_MSG_CT_GET`.
const MSG_NEW: u16 = SUBSYSTEM_CTNETLINK << 8;
const MSG_GET: u16 = SUBSYSTEM_CTNETLINK << 8 | 1;
/// `sizeof(struct nfgenmsg)`: family, version (NFNETLINK_V0), resource id.
const NFGENMSG_LEN: usize = 4;

/// `enum ctattr_type`, `ctattr_tuple`, `ctattr_ip`, `ctattr_l4proto`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const IPPROTO_TCP: u8 = 6;

/// One direction of a TCP connection as conntrack keys it: where its packets come from
/// and go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

impl Tuple {
    /// The other direction, as it would be untranslated.
    pub fn reversed(self) -> Self {
        Self { source: self.destination, destination: self.source }
    }
}

/// A ctnetlink message: the lookup we send, and the entry the kernel answers with.
#[derive(Debug, PartialEq, Eq)]
pub enum ConntrackMessage {
    /// Look up the TCP connection whose original direction is this tuple.
    Get(Tuple),
    /// A connection's entry: its reply tuple, when it has a TCP one over IP.
    Entry { reply: Option<Tuple> },
    /// Any other message of the subsystem, by type.
    Other(u16),
}

impl NetlinkSerializable for ConntrackMessage {
    fn message_type(&self) -> u16 {
        match self {
            Self::Get(_) => MSG_GET,
            Self::Entry { .. } => MSG_NEW,
            Self::Other(kind) => *kind,
        }
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.attributes().as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let family = match self {
            Self::Get(tuple) => address_family(tuple.source.ip()),
            _ => 0,
        };
        buffer[..NFGENMSG_LEN].copy_from_slice(&[family, 0, 0, 0]);
        self.attributes().as_slice().emit(&mut buffer[NFGENMSG_LEN..]);
    }
}

impl NetlinkDeserializable for ConntrackMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        if header.message_type != MSG_NEW {
            return Ok(Self::Other(header.message_type));
        }
        let attributes = payload.get(NFGENMSG_LEN..).ok_or("conntrack entry too short")?;
        let reply = match find(attributes, CTA_TUPLE_REPLY)? {
            Some(tuple) => decode_tuple(tuple)?,
            None => None,
        };
        Ok(Self::Entry { reply })
    }
}

impl ConntrackMessage {
    /// The attributes after nfgenmsg: for a lookup, its original tuple.
    fn attributes(&self) -> Vec<DefaultNla> {
        match self {
            Self::Get(tuple) => vec![nested(CTA_TUPLE_ORIG, &encode_tuple(*tuple))],
            _ => Vec::new(),
        }
    }
}

/// A NETLINK_NETFILTER socket for conntrack lookups, in one network namespace (each has a
/// table of its own).
pub struct Conntrack {
    channel: NetlinkChannel,
}

impl Conntrack {
    /// Opens the socket in the network namespace of `pid`.
    pub fn open(pid: u32) -> Result<Self, NetlinkError> {
        Ok(Self { channel: NetlinkChannel::open(pid, NETLINK_NETFILTER)? })
    }

    /// The reply tuple of the TCP connection whose packets leave with `original`; `None`
    /// when this namespace tracks no such connection.
    pub fn reply_of(&mut self, original: Tuple) -> Result<Option<Tuple>, NetlinkError> {
        let mut reply = None;
        let found = self.channel.exchange(ConntrackMessage::Get(original), false, |message| {
            if let ConntrackMessage::Entry { reply: Some(tuple) } = message {
                reply = Some(tuple);
            }
        })?;
        Ok(reply.filter(|_| found))
    }
}

fn address_family(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn nested(kind: u16, children: &[DefaultNla]) -> DefaultNla {
    let mut value = vec![0; children.buffer_len()];
    children.emit(&mut value);
    DefaultNla::new(kind | NLA_F_NESTED, value)
}

/// `CTA_TUPLE_IP` and `CTA_TUPLE_PROTO` of a TCP tuple; addresses and ports in network
/// order, as ctnetlink keeps them.
fn encode_tuple(tuple: Tuple) -> Vec<DefaultNla> {
    let address = |kind_v4, kind_v6, address: IpAddr| match address {
        IpAddr::V4(v4) => DefaultNla::new(kind_v4, v4.octets().to_vec()),
        IpAddr::V6(v6) => DefaultNla::new(kind_v6, v6.octets().to_vec()),
    };
    let addresses = [
        address(CTA_IP_V4_SRC, CTA_IP_V6_SRC, tuple.source.ip()),
        address(CTA_IP_V4_DST, CTA_IP_V6_DST, tuple.destination.ip()),
    ];
    let ports = [
        DefaultNla::new(CTA_PROTO_NUM, vec![IPPROTO_TCP]),
        DefaultNla::new(CTA_PROTO_SRC_PORT, tuple.source.port().to_be_bytes().to_vec()),
        DefaultNla::new(CTA_PROTO_DST_PORT, tuple.destination.port().to_be_bytes().to_vec()),
    ];
    vec![nested(CTA_TUPLE_IP, &addresses), nested(CTA_TUPLE_PROTO, &ports)]
}

/// A tuple's nested attributes back into a TCP tuple; `None` for another protocol or a
/// tuple missing a part.
fn decode_tuple(attributes: &[u8]) -> Result<Option<Tuple>, DecodeError> {
    let (Some(ip), Some(proto)) =
        (find(attributes, CTA_TUPLE_IP)?, find(attributes, CTA_TUPLE_PROTO)?)
    else {
        return Ok(None);
    };
    if find(proto, CTA_PROTO_NUM)? != Some(&[IPPROTO_TCP][..]) {
        return Ok(None);
    }
    let address = |kind_v4, kind_v6| -> Result<Option<IpAddr>, DecodeError> {
        if let Some(v4) = find(ip, kind_v4)? {
            return Ok(<[u8; 4]>::try_from(v4).ok().map(IpAddr::from));
        }
        Ok(find(ip, kind_v6)?.and_then(|v6| <[u8; 16]>::try_from(v6).ok()).map(IpAddr::from))
    };
    let port = |kind| -> Result<Option<u16>, DecodeError> {
        Ok(find(proto, kind)?
            .and_then(|port| <[u8; 2]>::try_from(port).ok())
            .map(u16::from_be_bytes))
    };
    let (Some(source), Some(destination), Some(source_port), Some(destination_port)) = (
        address(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
        address(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
        port(CTA_PROTO_SRC_PORT)?,
        port(CTA_PROTO_DST_PORT)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Tuple {
        source: SocketAddr::new(source, source_port),
        destination: SocketAddr::new(destination, destination_port),
    }))
}

/// The value of the first attribute of `kind` among `attributes` (flags aside).
fn find(attributes: &[u8], kind: u16) -> Result<Option<&[u8]>, DecodeError> {
    for attribute in NlasIterator::new(attributes) {
        let attribute = attribute?;
        if attribute.kind() & NLA_TYPE_MASK == kind {
            // The value, borrowed from `attributes` (new_checked has bounded the length).
            let length = usize::from(attribute.length());
            return Ok(attribute.into_inner().get(NLA_HEADER_SIZE..length));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(source: &str, destination: &str) -> Tuple {
        Tuple { source: source.parse().unwrap(), destination: destination.parse().unwrap() }
    }

    fn serialized(message: &ConntrackMessage) -> Vec<u8> {
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    /// A lookup is what conntrack(8) sends for `conntrack -G -p tcp -s 10.0.0.1
    /// -d 10.96.0.10 --sport 40000 --dport 80`: nfgenmsg AF_INET, then CTA_TUPLE_ORIG
    /// holding CTA_TUPLE_IP and CTA_TUPLE_PROTO, each nested.
    #[test]
    fn a_lookup_encodes_its_original_tuple() {
        let message = ConntrackMessage::Get(tuple("10.0.0.1:40000", "10.96.0.10:80"));
        assert_eq!(message.message_type(), 0x0101);
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            2, 0, 0, 0,                         // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0
            52, 0, 0x01, 0x80,                  // CTA_TUPLE_ORIG, nested
            20, 0, 0x01, 0x80,                  //   CTA_TUPLE_IP, nested
            8, 0, 1, 0, 10, 0, 0, 1,            //     CTA_IP_V4_SRC
            8, 0, 2, 0, 10, 96, 0, 10,          //     CTA_IP_V4_DST
            28, 0, 0x02, 0x80,                  //   CTA_TUPLE_PROTO, nested
            5, 0, 1, 0, 6, 0, 0, 0,             //     CTA_PROTO_NUM: TCP, padded
            6, 0, 2, 0, 0x9c, 0x40, 0, 0,       //     CTA_PROTO_SRC_PORT 40000, big-endian
            6, 0, 3, 0, 0, 80, 0, 0,            //     CTA_PROTO_DST_PORT 80
        ];
        assert_eq!(serialized(&message), expected);
    }

    #[test]
    fn an_ipv6_lookup_says_so() {
        let message = ConntrackMessage::Get(tuple("[fd00::1]:40000", "[fd00::2]:80"));
        let bytes = serialized(&message);
        assert_eq!(bytes[0], libc::AF_INET6 as u8);
        let original = find(&bytes[NFGENMSG_LEN..], CTA_TUPLE_ORIG).unwrap().unwrap();
        let ip = find(original, CTA_TUPLE_IP).unwrap().unwrap();
        let source = find(ip, CTA_IP_V6_SRC).unwrap().unwrap();
        assert_eq!(source, "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }

    /// An entry as the kernel answers: the original tuple, then the reply tuple (other
    /// attributes, status and timeout among them, around them).
    fn entry(original: Tuple, reply: Tuple) -> Vec<u8> {
        let attributes = vec![
            nested(CTA_TUPLE_ORIG, &encode_tuple(original)),
            nested(CTA_TUPLE_REPLY, &encode_tuple(reply)),
            DefaultNla::new(3, 0x18e_u32.to_be_bytes().to_vec()), // CTA_STATUS
            DefaultNla::new(7, 431_999_u32.to_be_bytes().to_vec()), // CTA_TIMEOUT
        ];
        let mut bytes = vec![2, 0, 0, 0];
        let mut rest = vec![0; attributes.as_slice().buffer_len()];
        attributes.as_slice().emit(&mut rest);
        bytes.extend(rest);
        bytes
    }

    fn header(message_type: u16) -> NetlinkHeader {
        let mut header = NetlinkHeader::default();
        header.message_type = message_type;
        header
    }

    #[test]
    fn an_entry_gives_its_reply_tuple() {
        // A client's connection to a service address, rewritten to a pod's.
        let original = tuple("10.0.0.1:40000", "10.96.0.10:80");
        let reply = tuple("10.244.1.7:8080", "10.0.0.1:40000");
        let decoded =
            ConntrackMessage::deserialize(&header(MSG_NEW), &entry(original, reply)).unwrap();
        assert_eq!(decoded, ConntrackMessage::Entry { reply: Some(reply) });
        assert_ne!(Some(original.reversed()), Some(reply), "translated");
    }

    #[test]
    fn an_entry_of_another_protocol_has_no_tcp_reply() {
        let udp = [
            DefaultNla::new(CTA_PROTO_NUM, vec![17]),
            DefaultNla::new(CTA_PROTO_SRC_PORT, 53_u16.to_be_bytes().to_vec()),
            DefaultNla::new(CTA_PROTO_DST_PORT, 53_u16.to_be_bytes().to_vec()),
        ];
        let mut reply = encode_tuple(tuple("10.0.0.2:53", "10.0.0.1:53"));
        reply[1] = nested(CTA_TUPLE_PROTO, &udp);
        let reply = nested(CTA_TUPLE_REPLY, &reply);
        let mut bytes = vec![2, 0, 0, 0];
        let mut rest = vec![0; reply.buffer_len()];
        reply.emit(&mut rest);
        bytes.extend(rest);
        let decoded = ConntrackMessage::deserialize(&header(MSG_NEW), &bytes).unwrap();
        assert_eq!(decoded, ConntrackMessage::Entry { reply: None });
    }

    #[test]
    fn other_messages_and_short_ones_are_told_apart() {
        let decoded = ConntrackMessage::deserialize(&header(MSG_GET), &[]).unwrap();
        assert_eq!(decoded, ConntrackMessage::Other(MSG_GET));
        assert!(ConntrackMessage::deserialize(&header(MSG_NEW), &[2, 0]).is_err());
        // An attribute whose length overruns the message.
        assert!(
            ConntrackMessage::deserialize(&header(MSG_NEW), &[2, 0, 0, 0, 40, 0, 2, 0]).is_err()
        );
    }
}
