SUMMARY = "adaptivenet demo: the Fashion-MNIST demo bundle and the demo signing key"
DESCRIPTION = "Puts demo/fmnist-resnet.bundle into adaptived's drop folder (the \
daemon installs it at its first start) and the demo minisign public key into \
/etc/adaptivenet/keys/demo.pub. The demo key's secret half is public in the \
repository: this package is for demo images only (adaptivenet-demo-image); a \
production image must never contain it."
HOMEPAGE = "https://example.invalid/adaptivenet"
SECTION = "ml"

LICENSE = "MIT | Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE-MIT;md5=315aad16083ab9df0d219a9bee94e14e \
                    file://LICENSE-APACHE;md5=3b83ef96387f14655fc854ddc3c6bd57"

ADAPTIVENET_GIT_URI ?= "git://example.invalid/adaptivenet.git;protocol=https;branch=main"
SRC_URI = "${ADAPTIVENET_GIT_URI};destsuffix=adaptivenet"
SRCREV = "731200e9ab0581ce14e2cec8a758c8766c8a471b"
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/adaptivenet"



# Nothing to build: a bundle and a key.
do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d -m 0755 ${D}${sysconfdir}/adaptivenet/keys
    install -m 0644 ${S}/tests/fixtures/keys/demo.pub ${D}${sysconfdir}/adaptivenet/keys/demo.pub
    # The drop folder as adaptived's recipe makes it (owner, mode): the
    # daemon takes the bundle at its first start (after watch.settle_s).
    install -d -m 0750 -o adaptivenet -g adaptivenet ${D}${localstatedir}/lib/adaptivenet
    install -d -m 0750 -o adaptivenet -g adaptivenet ${D}${localstatedir}/lib/adaptivenet/bundles
    install -m 0644 -o adaptivenet -g adaptivenet ${S}/demo/fmnist-resnet.bundle \
        ${D}${localstatedir}/lib/adaptivenet/bundles/fmnist-resnet.bundle
}

# The adaptivenet user comes from adaptived's useradd (staged into this
# recipe's sysroot through DEPENDS, so the chown above resolves it).
DEPENDS = "adaptived"
RDEPENDS:${PN} = "adaptived"

FILES:${PN} = "${sysconfdir}/adaptivenet/keys/demo.pub \
               ${localstatedir}/lib/adaptivenet/bundles/fmnist-resnet.bundle"
