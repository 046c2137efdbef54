/* Structures shared by the XDP program (bpf/xtrace.c) and the agent.
 *
 * This header holds ONLY what both sides read. The agent never re-declares these layouts:
 * the compile step reports each map's key/value layout (field names, offsets, sizes) as BCC
 * sees it, and the agent builds its decoders from that report.
 */
#ifndef XTRACE_H
#define XTRACE_H

/* traffic_type values (label traffic_type) */
#define XT_TRAFFIC_ETHERNET   0
#define XT_TRAFFIC_ROCE       1   /* RoCEv2: UDP destination port 4791 with a BTH */
#define XT_TRAFFIC_INFINIBAND 2   /* IPoIB link */

/* One flow, per ingress interface. Addresses are 16 bytes; IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d) and ip_version says which text form to print. Ports are host order and
 * 0 for protocols without ports and for non-first fragments. */
struct flow_key {
    __u32 ifindex;
    __u8  src[16];
    __u8  dst[16];
    __u16 src_port;
    __u16 dst_port;
    __u8  protocol;       /* IANA protocol number (final, after IPv6 extension headers) */
    __u8  traffic_type;   /* XT_TRAFFIC_* */
    __u8  rdma_opcode;    /* BTH opcode, RoCEv2 only */
    __u8  ip_version;     /* 4 or 6 */
    __u32 dest_qp;        /* BTH destination QP (24 bits), RoCEv2 only */
};

/* Per-CPU value of a flow and of an interface total. */
struct counters {
    __u64 packets;
    __u64 bytes;
};

/* Indexes of the per-CPU `stats` array: what the program could not track. */
enum xt_stat {
    XT_STAT_MALFORMED = 0,   /* a header was cut short or invalid (bad IHL, bad version...) */
    XT_STAT_NON_IP,          /* parsed fine but not IPv4/IPv6 (ARP, LLDP...): interface totals only */
    XT_STAT_TABLE_FULL,      /* flow insert failed: packets stay in interface totals only */
    XT_STAT_FLOW_INSERTS,    /* new flows inserted; inserts - drained = LRU evictions */
    XT_STAT_SAMPLED,         /* packets that went through the 1-in-N sampler into the flow table */
    XT_STAT_MAX,
};

#endif
