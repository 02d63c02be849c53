SUMMARY = "A demo image: adaptived serving the Fashion-MNIST demo bundle"
DESCRIPTION = "core-image-minimal with adaptived, the demo bundle and the demo \
key (adaptivenet-demo). For evaluation only: the demo key's secret half is \
public. Production images add `adaptived` alone and ship their own key."
LICENSE = "MIT"

require recipes-core/images/core-image-minimal.bb

IMAGE_INSTALL:append = " adaptived adaptivenet-demo curl"

# adaptived must trust the demo key in this image; set in the kas files as
#   ADAPTIVENET_TRUSTED_KEYS:pn-adaptived = "/etc/adaptivenet/keys/demo.pub"
python () {
    keys = d.getVar('ADAPTIVENET_TRUSTED_KEYS:pn-adaptived') or ''
    if '/etc/adaptivenet/keys/demo.pub' not in keys:
        bb.warn('adaptivenet-demo-image: adaptived does not trust /etc/adaptivenet/keys/demo.pub; '
                'set ADAPTIVENET_TRUSTED_KEYS:pn-adaptived = "/etc/adaptivenet/keys/demo.pub" '
                '(the kas files under yocto/kas do) or the demo bundle will be rejected')
}
