// Data-plane roles. The service's runtime identity gets exactly what the app and the Functions host need;
// the deployment identity gets the package container and nothing else;
// the admin who runs azd (AZURE_PRINCIPAL_ID) gets what the admin CLI (`python -m shared.cli`) and the
// postprovision hook need: write API-token hashes and OAuth apps to the tables, and write Key Vault secrets
// (OAuth client secrets, the link-signing key). Nobody gets a storage key: shared-key access is off.
param storageAccountName string
param keyVaultName string
@description('Envelope mode\'s key-encryption key in that vault (keyvault.bicep creates it).')
param dataKeyName string
param appInsightsName string
param identityPrincipalId string
param deployIdentityPrincipalId string
param packageStorageAccountName string
param packageContainerName string
param adminPrincipalId string = ''
@description('User, ServicePrincipal, Group, or empty: Azure looks the type up (the admin is not a new principal, so the lookup cannot miss it).')
@allowed([
  ''
  'User'
  'ServicePrincipal'
  'Group'
])
param adminPrincipalType string = ''

// Built-in role definition ids (the same in every Azure cloud).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
// Key Vault Crypto Service Encryption User: data actions keys/read, keys/wrap/action, keys/unwrap/action
// (its control-plane actions, Event Grid event subscriptions, mean nothing at a key's scope).
var keyVaultCryptoServiceEncryptionUser = 'e147488a-f6f5-4113-8e2d-b22465e65bf6'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

// No queue role: the service has HTTP and timer triggers and uses no queue (timers need only the host's
// blob leases, covered by Blob Data Owner; webhooks use a table outbox). Add Storage Queue Data
// Contributor, 974c5e8b-45b9-4653-ba55-5f855dd0fb88, together with the first queue trigger.

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource dataKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' existing = {
  parent: vault
  name: dataKeyName
}

resource packageStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: packageStorageAccountName
}

resource packageBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: packageStorage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: packageBlobs
  name: packageContainerName
}

// Key Vault Secrets Officer without purge, backup and restore: the app reads, writes, deletes and recovers
// secrets (refresh tokens, client secrets, the signing key), and never needs to export one (backup) or
// erase one for good (purge; purge protection forbids it anyway). Its name carries the resource group's
// id, because a custom role's name must be unique in the tenant.
resource appSecretsRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'mailbox-connect-secrets')
  properties: {
    roleName: 'Mailbox Connect secrets (${resourceGroup().name}, ${uniqueString(resourceGroup().id)})'
    description: 'Get, set, delete and recover Key Vault secrets; no purge, backup or restore.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.KeyVault/vaults/secrets/*'
        ]
        notDataActions: [
          'Microsoft.KeyVault/vaults/secrets/purge/action'
          'Microsoft.KeyVault/vaults/secrets/backup/action'
          'Microsoft.KeyVault/vaults/secrets/restore/action'
        ]
      }
    ]
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// The app identity: the host's storage (blobs: host keys, leases, the deployment package) ...
resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
  }
}

// ... the service's tables (accounts, principals, flows, links, apps, apitokens, outbox, webhooks, deliveries, accountcounts) ...
resource appTables 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, storageTableDataContributor)
  scope: storage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
  }
}

// ... Key Vault secrets: it reads client secrets and the signing key, and writes refresh tokens ...
resource appSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identityPrincipalId, appSecretsRole.id)
  scope: vault
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: appSecretsRole.id
  }
}

// ... envelope mode's key-encryption key, and that key only: read its public part, wrap and unwrap data keys ...
resource appDataKey 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataKey.id, identityPrincipalId, keyVaultCryptoServiceEncryptionUser)
  scope: dataKey
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCryptoServiceEncryptionUser)
  }
}

// ... and telemetry into Application Insights, which accepts Entra-authenticated ingestion only.
resource appTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identityPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

// The deployment identity: the platform writes the package azd uploads and reads it at start-up.
resource deployPackage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(packageContainer.id, deployIdentityPrincipalId, storageBlobDataContributor)
  scope: packageContainer
  properties: {
    principalId: deployIdentityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

// The admin: the admin CLI writes API-token hashes and OAuth apps (tables) and client secrets (Key Vault);
// the postprovision hook writes the signing key; in envelope mode (MC_SECRET_MODE) the CLI's add-app,
// rotate-data-key and migrate-secrets seal with the data keys, which takes wrap/unwrap on the one key.
resource adminTables 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(adminPrincipalId)) {
  name: guid(storage.id, adminPrincipalId, storageTableDataContributor)
  scope: storage
  properties: {
    principalId: adminPrincipalId
    principalType: empty(adminPrincipalType) ? null : adminPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
  }
}

resource adminSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(adminPrincipalId)) {
  name: guid(vault.id, adminPrincipalId, keyVaultSecretsOfficer)
  scope: vault
  properties: {
    principalId: adminPrincipalId
    principalType: empty(adminPrincipalType) ? null : adminPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficer)
  }
}

resource adminDataKey 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(adminPrincipalId)) {
  name: guid(dataKey.id, adminPrincipalId, keyVaultCryptoServiceEncryptionUser)
  scope: dataKey
  properties: {
    principalId: adminPrincipalId
    principalType: empty(adminPrincipalType) ? null : adminPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCryptoServiceEncryptionUser)
  }
}
