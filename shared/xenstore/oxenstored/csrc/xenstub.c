/*
 * LD_PRELOAD shim that lets Debian's oxenstored run without a hypervisor,
 * for tests. Built by the Go harness in package oxenstored at test time.
 *
 * With --no-domain-init, oxenstored only needs these at start-up:
 *   xc_interface_open  - would open /dev/xen/privcmd: return a dummy handle.
 *   xenevtchn_open     - would open /dev/xen/evtchn: return a dummy handle.
 *   xenevtchn_bind_virq (VIRQ_DOM_EXC) - return a port number.
 *   xenevtchn_fd       - polled by the main loop: return the read end of a
 *                        pipe whose write end stays open, so it never fires.
 *   setrlimit(RLIMIT_NOFILE) - raising it above the hard limit of a
 *                        container fails with EPERM, which is fatal for it:
 *                        clamp to the hard limit instead.
 * Everything else that touches domains is stubbed to fail loudly, because
 * with no domain introduced it is never reached.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

static int dummy_handle;

static void unexpected(const char *fn)
{
	fprintf(stderr, "xenstub: unexpected call to %s\n", fn);
	errno = ENOSYS;
}

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
	int (*real)(__rlimit_resource_t, const struct rlimit *) =
		(int (*)(__rlimit_resource_t, const struct rlimit *))dlsym(RTLD_NEXT, "setrlimit");
	struct rlimit cur, clamped;
	int rc;

	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	rc = real(resource, rlim);
	if (rc == 0 || resource != RLIMIT_NOFILE || errno != EPERM)
		return rc;
	if (getrlimit(RLIMIT_NOFILE, &cur) != 0)
		return rc;
	clamped = *rlim;
	if (clamped.rlim_max > cur.rlim_max)
		clamped.rlim_max = cur.rlim_max;
	if (clamped.rlim_cur > clamped.rlim_max)
		clamped.rlim_cur = clamped.rlim_max;
	return real(resource, &clamped);
}

/* libxenctrl */

void *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags)
{
	(void)logger; (void)dombuild_logger; (void)open_flags;
	return &dummy_handle;
}

int xc_interface_close(void *xch)
{
	(void)xch;
	return 0;
}

int xc_domain_getinfolist(void *xch, uint32_t first_domain, unsigned int max_domains, void *info)
{
	(void)xch; (void)first_domain; (void)max_domains; (void)info;
	return 0; /* no domains */
}

void *xc_map_foreign_range(void *xch, uint32_t dom, int size, int prot, unsigned long mfn)
{
	(void)xch; (void)dom; (void)size; (void)prot; (void)mfn;
	unexpected("xc_map_foreign_range");
	return NULL;
}

/* libxenevtchn */

static int evtchn_fd = -1;

void *xenevtchn_open(void *logger, unsigned open_flags)
{
	(void)logger; (void)open_flags;
	return &dummy_handle;
}

void *xenevtchn_fdopen(void *logger, int fd, unsigned open_flags)
{
	(void)logger; (void)fd; (void)open_flags;
	unexpected("xenevtchn_fdopen");
	return NULL;
}

int xenevtchn_close(void *xce)
{
	(void)xce;
	return 0;
}

int xenevtchn_fd(void *xce)
{
	int p[2];

	(void)xce;
	if (evtchn_fd < 0) {
		if (pipe2(p, O_CLOEXEC) != 0)
			return -1;
		evtchn_fd = p[0]; /* p[1] is kept open and never written */
	}
	return evtchn_fd;
}

int xenevtchn_bind_virq(void *xce, unsigned int virq)
{
	(void)xce; (void)virq;
	return 1;
}

int xenevtchn_bind_interdomain(void *xce, uint32_t domid, unsigned int remote_port)
{
	(void)xce; (void)domid; (void)remote_port;
	unexpected("xenevtchn_bind_interdomain");
	return -1;
}

int xenevtchn_unbind(void *xce, unsigned int port)
{
	(void)xce; (void)port;
	return 0;
}

int xenevtchn_pending(void *xce)
{
	(void)xce;
	errno = EAGAIN;
	return -1;
}

int xenevtchn_unmask(void *xce, unsigned int port)
{
	(void)xce; (void)port;
	return 0;
}

int xenevtchn_notify(void *xce, unsigned int port)
{
	(void)xce; (void)port;
	return 0;
}
