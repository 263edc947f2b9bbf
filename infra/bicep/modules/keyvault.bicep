// Key Vault: refresh tokens, OAuth client secrets and the link-signing key (`mc-signing-key`), and envelope
// mode's key-encryption key (`mc-data-key`), which wraps the data keys that seal refresh tokens in tables.
// Azure RBAC only (no access policies), soft delete with purge protection, and an audit trail of every
// secret read and write and every key operation in Log Analytics.
param name string
param location string
param tags object
param logAnalyticsWorkspaceId string

@description('Private networking: no public network access; reachable through a private endpoint only.')
param privateNetworking bool = false

@description('Envelope mode: name of the RSA key that wraps the data keys (the app reads it as MC_DATA_KEY_NAME).')
param dataKeyName string = 'mc-data-key'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: privateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// Envelope mode's key-encryption key (KEK): the app wraps and unwraps 32-byte data keys with it
// (RSA-OAEP-256) and can do nothing else with it; its private part never leaves the vault. ARM creates the
// key only if it does not exist: a redeployment neither adds a version nor changes it. The rotation policy
// adds a new version every year; data keys wrapped by an older version still unwrap (the app keeps the
// versioned key id with each one), so no version is given an expiry.
resource dataKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' = {
  parent: vault
  name: dataKeyName
  properties: {
    kty: 'RSA'
    keySize: 3072
    keyOps: [
      'wrapKey'
      'unwrapKey'
    ]
    rotationPolicy: {
      lifetimeActions: [
        {
          trigger: {
            timeAfterCreate: 'P1Y'
          }
          action: {
            type: 'rotate'
          }
        }
      ]
    }
  }
}

resource audit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
output dataKeyName string = dataKey.name
