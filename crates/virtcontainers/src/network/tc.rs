//! Traffic control for Kata's `tcfilter` model: an ingress qdisc on the
//! veth and on the tap, and on each a `u32 match u8 0 0 action mirred
//! egress redirect` filter to the other, so every frame arriving on one
//! leaves by the other. (This host's kernel has `u32` and `mirred`, not
//! `matchall` nor `flower`.)

use futures::TryStreamExt;
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};

use super::netlink::{Netlink, errno};
use crate::error::Error;

/// `ETH_P_ALL` in network order, as tc's `protocol all`.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

fn is_ingress(q: &TcMessage) -> bool {
    q.header.parent == TcHandle::INGRESS
        && q.attributes
            .iter()
            .any(|a| matches!(a, TcAttribute::Kind(k) if k == "ingress" || k == "clsact"))
}

impl Netlink {
    /// Whether link `index` has an ingress (or clsact) qdisc.
    pub(crate) async fn has_ingress(&self, index: u32) -> Result<bool, Error> {
        let qdiscs: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.failed("list", "qdiscs"))?;
        Ok(qdiscs
            .iter()
            .any(|q| q.header.index == index as i32 && is_ingress(q)))
    }

    /// Adds an ingress qdisc to link `index`.
    pub(crate) async fn add_ingress(&self, index: u32, name: &str) -> Result<(), Error> {
        self.handle
            .qdisc()
            .add(index as i32)
            .ingress()
            .execute()
            .await
            .map_err(self.failed("add an ingress qdisc to", name))
    }

    /// Deletes the ingress qdisc of link `index` (its filters go with it);
    /// a link or qdisc already gone is fine.
    pub(crate) async fn delete_ingress(&self, index: u32, name: &str) -> Result<(), Error> {
        let mut request = self.handle.qdisc().del(index as i32);
        request.message_mut().header.parent = TcHandle::INGRESS;
        request.message_mut().header.handle = TcHandle::from(0xffff_0000u32);
        match request.execute().await {
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => {
                Ok(())
            }
            r => r.map_err(self.failed("delete the ingress qdisc of", name)),
        }
    }

    /// Redirects every frame arriving on link `from` out of link `to`
    /// (`tc filter add dev FROM ingress protocol all u32 match u8 0 0
    /// action mirred egress redirect dev TO`).
    pub(crate) async fn add_redirect(
        &self,
        from: u32,
        to: u32,
        names: (&str, &str),
    ) -> Result<(), Error> {
        let what = format!("{} -> {}", names.0, names.1);
        let request = self
            .handle
            .traffic_filter(from as i32)
            .add()
            .parent(0xffff_0000)
            .protocol(PROTOCOL_ALL)
            .redirect(to)
            .map_err(self.failed("build the redirect filter", what.clone()))?;
        request
            .execute()
            .await
            .map_err(self.failed("add the redirect filter", what))
    }
}
