// BackupBucket: off-host copies of backups in S3 - private, encrypted, versioned, TLS-only, with a
// lifecycle for old versions. Off unless jhe:backupBucket says otherwise; never deleted with the stack
// (retainOnDelete + protect). The AWS provider plugin cannot be built here, so this component is
// verified with Pulumi mocks (tests/unit/backupBucket.test.ts).
import * as pulumi from "@pulumi/pulumi";
import * as aws from "@pulumi/aws";

export interface BackupBucketArgs {
    /** Bucket name; the provider names it when omitted. */
    name?: string;
    /** Days to keep non-current versions of backups. */
    noncurrentDays?: number;
}

export class BackupBucket extends pulumi.ComponentResource {
    public readonly bucket: aws.s3.Bucket;
    public readonly bucketName: pulumi.Output<string>;

    constructor(name: string, args: BackupBucketArgs, opts?: pulumi.ComponentResourceOptions) {
        super("jhe:upgrade:BackupBucket", name, {}, opts);
        const keep = { parent: this, retainOnDelete: true, protect: true };
        this.bucket = new aws.s3.Bucket(`${name}`, { bucket: args.name, forceDestroy: false }, keep);
        const bucket = this.bucket.id;
        new aws.s3.BucketPublicAccessBlock(`${name}-private`, {
            bucket, blockPublicAcls: true, blockPublicPolicy: true, ignorePublicAcls: true, restrictPublicBuckets: true,
        }, keep);
        new aws.s3.BucketVersioning(`${name}-versioning`, {
            bucket, versioningConfiguration: { status: "Enabled" },
        }, keep);
        new aws.s3.BucketServerSideEncryptionConfiguration(`${name}-encryption`, {
            bucket, rules: [{ applyServerSideEncryptionByDefault: { sseAlgorithm: "aws:kms" }, bucketKeyEnabled: true }],
        }, keep);
        new aws.s3.BucketPolicy(`${name}-tls-only`, {
            bucket,
            policy: this.bucket.arn.apply((arn) => JSON.stringify({
                Version: "2012-10-17",
                Statement: [{
                    Sid: "DenyInsecureTransport", Effect: "Deny", Principal: "*", Action: "s3:*",
                    Resource: [arn, `${arn}/*`], Condition: { Bool: { "aws:SecureTransport": "false" } },
                }],
            })),
        }, keep);
        new aws.s3.BucketLifecycleConfiguration(`${name}-lifecycle`, {
            bucket,
            rules: [{
                id: "expire-old-backup-versions", status: "Enabled", filter: { prefix: "" },
                noncurrentVersionExpiration: { noncurrentDays: args.noncurrentDays ?? 90 },
                abortIncompleteMultipartUpload: { daysAfterInitiation: 7 },
            }],
        }, keep);
        this.bucketName = this.bucket.bucket;
        this.registerOutputs({ bucketName: this.bucketName });
    }
}
