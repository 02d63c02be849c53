SUMMARY = "adaptived: on-device neural architecture adaptation and KServe v2 serving"
DESCRIPTION = "The adaptivenet daemon. It watches a drop folder for signed \
supernet bundles, searches the best subnet for this board under its latency \
budget, serves it over the KServe v2 / Open Inference Protocol on localhost, \
and switches subnets when the board gets slower or busier."
HOMEPAGE = "https://example.invalid/adaptivenet"
SECTION = "ml"

# The workspace's `license = "MIT OR Apache-2.0"`.
LICENSE = "MIT | Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE-MIT;md5=315aad16083ab9df0d219a9bee94e14e \
                    file://LICENSE-APACHE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# The whole workspace is fetched (the daemon crate uses the workspace's
# Cargo.lock and the onnx/ library); only the daemon crate is built.
# ADAPTIVENET_GIT_URI: set it to your mirror of the repository.
ADAPTIVENET_GIT_URI ?= "git://example.invalid/adaptivenet.git;protocol=https;branch=main"
SRC_URI = "${ADAPTIVENET_GIT_URI};destsuffix=adaptivenet"
# A commit whose Cargo.lock is the one adaptived-crates.inc was generated
# from (and which has LICENSE-*): move it with every regeneration and at each
# release (yocto/README.md, "Keeping the recipe true").
SRCREV = "731200e9ab0581ce14e2cec8a758c8766c8a471b"

# scarthgap unpacks into WORKDIR, later releases into UNPACKDIR; with an
# explicit destsuffix the source folder is the same on both.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/adaptivenet"

require adaptived-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# Build the daemon crate of the workspace, and of it only the daemon binary.
CARGO_SRC_DIR = "daemon"
CARGO_LOCK_PATH = "${S}/Cargo.lock"
CARGO_LOCK_SRC_DIR = "${S}"
CARGO_BUILD_FLAGS:append = " --bin adaptived"

# The minisign public keys bundles must be signed with, written into
# /etc/adaptivenet/config.yaml (`trusted_keys`). Ship the key files from your
# own recipe (a production image) or adaptivenet-demo (a demo image).
ADAPTIVENET_TRUSTED_KEYS ?= "/etc/adaptivenet/keys/release.pub"

USERADD_PACKAGES = "${PN}"
# The same user as systemd/adaptivenet.conf (sysusers.d) on other systems.
USERADD_PARAM:${PN} = "--system --user-group --home-dir ${localstatedir}/lib/adaptivenet \
                       --no-create-home --shell ${base_sbindir}/nologin \
                       --comment 'adaptivenet on-device daemon' adaptivenet"

SYSTEMD_SERVICE:${PN} = "adaptived.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    # cargo_do_install put adaptived into ${bindir}.
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/adaptived.service ${D}${systemd_system_unitdir}/adaptived.service

    install -d -m 0755 ${D}${sysconfdir}/adaptivenet ${D}${sysconfdir}/adaptivenet/keys
    install -m 0644 ${S}/systemd/config.yaml.example ${D}${sysconfdir}/adaptivenet/config.yaml
    keys=""
    for k in ${ADAPTIVENET_TRUSTED_KEYS}; do keys="${keys:+$keys, }$k"; done
    sed -i "s|^trusted_keys: \[[^]]*\]|trusted_keys: [$keys]|" ${D}${sysconfdir}/adaptivenet/config.yaml
    grep -q "^trusted_keys: \[$keys\]" ${D}${sysconfdir}/adaptivenet/config.yaml

    # The state folders (the unit's StateDirectory= would create them too;
    # in the image they are there for a read-only rootfs and for bundles
    # put into the image).
    install -d -m 0750 -o adaptivenet -g adaptivenet ${D}${localstatedir}/lib/adaptivenet
    install -d -m 0750 -o adaptivenet -g adaptivenet ${D}${localstatedir}/lib/adaptivenet/bundles
    install -d -m 0750 -o adaptivenet -g adaptivenet ${D}${localstatedir}/lib/adaptivenet/state

    # OTA: the Mender Update Module and the updater-neutral installer that
    # the SWUpdate handler and the RAUC hook call (package ${PN}-ota).
    install -d ${D}${datadir}/mender/modules/v3 ${D}${libexecdir}/adaptivenet
    install -m 0755 ${S}/ota/mender/adaptivenet-bundle ${D}${datadir}/mender/modules/v3/adaptivenet-bundle
    install -m 0755 ${S}/ota/adaptivenet-install ${D}${libexecdir}/adaptivenet/adaptivenet-install
}

CONFFILES:${PN} = "${sysconfdir}/adaptivenet/config.yaml"

PACKAGES =+ "${PN}-ota"
SUMMARY:${PN}-ota = "Install adaptivenet bundles from Mender, SWUpdate or RAUC"
FILES:${PN}-ota = "${datadir}/mender/modules/v3/adaptivenet-bundle \
                   ${libexecdir}/adaptivenet/adaptivenet-install"
RDEPENDS:${PN}-ota = "${PN} curl"

FILES:${PN} += "${systemd_system_unitdir}/adaptived.service \
                ${sysconfdir}/adaptivenet \
                ${localstatedir}/lib/adaptivenet"
