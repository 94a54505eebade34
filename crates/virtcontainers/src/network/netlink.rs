//! An rtnetlink connection inside a network namespace, and the link
//! operations the SDK needs there.

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};
use tokio::task::JoinHandle;

use crate::error::Error;

/// A connection whose socket lives in one network namespace (made there,
/// it stays there whatever thread uses it). Its reader task ends on drop.
pub(crate) struct Netlink {
    pub(crate) handle: Handle,
    netns: Option<PathBuf>,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The errno of a netlink error answer.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A link's name.
pub(crate) fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A link's MTU.
pub(crate) fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// A link's transmit queue length.
pub(crate) fn link_txqlen(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::TxQueueLen(q) => Some(*q),
        _ => None,
    })
}

impl Netlink {
    /// Connects inside `netns` (`None`: this thread's namespace).
    pub(crate) fn connect(netns: Option<&Path>) -> Result<Netlink, Error> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // The socket is made on a thread in the namespace; the async
        // wrapping needs this runtime, so it happens here.
        let opened = vc_hypervisor::tap::in_netns(netns, || {
            rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
        });
        let socket = opened.map_err(|source| Error::HostIo {
            operation: "open a netlink socket in",
            path: netns.map_or_else(|| "this network namespace".into(), Path::to_owned),
            source,
        })?;
        // SAFETY: the fd was just taken out of its only owner.
        let socket = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        Ok(Netlink {
            handle,
            netns: netns.map(Path::to_owned),
            task: tokio::spawn(connection),
        })
    }

    /// The namespace the connection works in.
    pub(crate) fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    pub(crate) fn failed(
        &self,
        operation: &'static str,
        target: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> Error {
        let (target, netns) = (target.into(), self.netns.clone());
        move |source| Error::Netlink {
            operation,
            target,
            netns,
            source: Box::new(source),
        }
    }

    /// Every link.
    pub(crate) async fn links(&self) -> Result<Vec<LinkMessage>, Error> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.failed("list", "links"))
    }

    /// The link named `name`, if any.
    pub(crate) async fn link(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .find(|l| link_name(l) == Some(name)))
    }

    /// Sets a link's MTU and brings it up.
    pub(crate) async fn set_mtu_up(&self, index: u32, mtu: u32, name: &str) -> Result<(), Error> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(self.failed("set the MTU of and bring up", name))
    }

    /// Brings a link up.
    pub(crate) async fn set_up(&self, index: u32, name: &str) -> Result<(), Error> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(self.failed("bring up", name))
    }

    /// Sets a link's transmit queue length; a link gone is fine.
    pub(crate) async fn set_txqlen(&self, index: u32, len: u32, name: &str) -> Result<(), Error> {
        let message = LinkUnspec::new_with_index(index).txqueuelen(len).build();
        match self.handle.link().change(message).execute().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            r => r.map_err(self.failed("set the queue length of", name)),
        }
    }

    /// Deletes the link named `name`; one already gone is fine.
    pub(crate) async fn delete_link(&self, name: &str) -> Result<(), Error> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            r => r.map_err(self.failed("delete", name)),
        }
    }
}
