package main

// The KMS providers the audit signing key may live in (--audit-signing-kms,
// see tuf.OpenKMS). Each registers its scheme with sigstore's kms package;
// any other "<scheme>://" reference goes to a sigstore-kms-<scheme> plugin
// on PATH. They are imported here, in main only.
import (
	_ "github.com/sigstore/sigstore/pkg/signature/kms/aws"        // awskms://
	_ "github.com/sigstore/sigstore/pkg/signature/kms/azure"      // azurekms://
	_ "github.com/sigstore/sigstore/pkg/signature/kms/gcp"        // gcpkms://
	_ "github.com/sigstore/sigstore/pkg/signature/kms/hashivault" // hashivault://
)
